"""CIL methods, their networks and backbones. Importing this package registers every method."""
from . import bic, coil, der, finetune, foster, gem, icarl, joint, memo, podnet, replay, wa  # noqa: F401  (registration)
from .base import METHODS, Method, Phase, Task, TaskData, register

__all__ = ["METHODS", "Method", "Phase", "Task", "TaskData", "register"]
