"""CIL methods, their networks and backbones. Importing this package registers every method."""
from . import der, finetune, icarl, joint, memo, replay, wa  # noqa: F401  (registration)
from .base import METHODS, Method, Task, register

__all__ = ["METHODS", "Method", "Task", "register"]
