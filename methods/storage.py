"""Stored-model precision (the experiment key `model_storage`): the dtype of the blocks a method
freezes and never trains again (DER's old backbones, MEMO's old specialized blocks and a frozen
generalized block, the teacher iCaRL and WA keep). Training always runs in fp32; a block is
converted once, when it is frozen (`IncrementalNet.freeze`, `losses.frozen_copy`).

Storages
- fp32: nothing changes (the default).
- fp16 / bf16: every floating tensor of the block, parameters and buffers (BatchNorm running
  statistics included), is stored in the half type. They are all the same kind of number, and
  halving the buffers too is what a stored half-precision checkpoint is.
- int8: the weights of convolutions and linear layers (tensors of 2 or more dimensions) are stored
  as int8 with one fp32 scale per output channel (symmetric, weight-only; zero point 0, values
  -127..127, the scale is max |w| / 127 of the channel, computed by PyTorch's per-channel observer).
  1-D tensors (BatchNorm affine, biases) and the buffers stay fp32: they are about half a percent
  of a ResNet's parameters, the int8 grid of a per-channel scale would be one value per channel
  for them, and weight-only int8 everywhere (PyTorch's dynamic quantization, LLM.int8, GPTQ)
  keeps them in float.
- Never converted, whatever the storage: integer buffers (BatchNorm's num_batches_tracked stays
  int64) and every module that still trains.

How: `torch.nn.utils.parametrize`. The stored tensor replaces the original first (int8 or half,
requires_grad False), then a parametrization that dequantizes to fp32 in forward is registered
with unsafe=True (register_parametrization refuses a right_inverse that changes the dtype). So
the module computes in fp32 as before, and `module.parameters()` / `buffers()` yield exactly what
is stored (the int8 or half tensor and the fp32 scales), which is what the memory accounting
(budgets/accounting.py) bills: no special case there. deepcopy, state_dict / load_state_dict,
`.to(device)` and `.to(memory_format=...)` keep working.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.ao.quantization.observer import PerChannelMinMaxObserver
from torch.nn.utils import parametrize

STORAGES = ("fp32", "fp16", "bf16", "int8")
HALF_TYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
INT8_LEVELS = 127  # symmetric: -127 .. 127, so that 0 is exact and the grid is the same both ways


def check_storage(text: str) -> str:
    if text not in STORAGES:
        raise ValueError(f"unknown model_storage {text!r}; use one of {', '.join(STORAGES)} "
                         "(the dtype of the blocks a method freezes; fp32 stores them as trained)")
    return text


def storage_applies(method_cls: type, policy: str) -> bool:
    """Whether `model_storage` changes what `method_cls` is billed under `policy`: growing methods
    (DER, MEMO) freeze old blocks under every policy; a teacher keeper (iCaRL, WA) only holds
    something counted under "strict", which bills the teacher; every other method freezes nothing."""
    if method_cls.grows():
        return True
    return bool(method_cls.keeps_teacher) and policy == "strict"


class HalfToFloat(nn.Module):
    """Forward of a tensor stored in fp16/bf16: the fp32 value the module computes with."""

    def forward(self, stored: torch.Tensor) -> torch.Tensor:
        return stored.float()


class Int8Dequant(nn.Module):
    """Forward of an int8 weight: q * scale per output channel (dimension 0), in fp32.

    The scales are a Parameter (requires_grad False) so that `parameters()` yields them and every
    counting policy bills them, as it bills the int8 weight."""

    def __init__(self, scale: torch.Tensor) -> None:
        super().__init__()
        self.scale = nn.Parameter(scale, requires_grad=False)

    def forward(self, stored: torch.Tensor) -> torch.Tensor:
        shape = (-1,) + (1,) * (stored.dim() - 1)
        return stored.float() * self.scale.view(shape)


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 values, fp32 scale per output channel) of a weight: symmetric per-channel quantization.

    Computed on the CPU so that a CUDA run stores the same integers as a CPU run; on the meta device
    (the planner) only the shapes are made."""
    if weight.is_meta:
        return torch.empty_like(weight, dtype=torch.int8), torch.empty(weight.shape[0], device=weight.device)
    observer = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
                                        quant_min=-INT8_LEVELS, quant_max=INT8_LEVELS)
    cpu = weight.detach().float().cpu()
    observer(cpu)
    scale, _ = observer.calculate_qparams()  # zero point 0 under the symmetric scheme
    # round half to even, as torch.quantize_per_channel (deprecated since 2.10) does
    values = torch.round(cpu / scale.view((-1,) + (1,) * (cpu.dim() - 1))).clamp(-INT8_LEVELS, INT8_LEVELS)
    return values.to(torch.int8).to(weight.device), scale.float().to(weight.device)


def _replace(module: nn.Module, name: str, stored: torch.Tensor, forward: nn.Module, is_parameter: bool) -> None:
    """Swap `module.<name>` for `stored` and register `forward` as its parametrization."""
    # Remove it first: assigning a tensor of another dtype over a Parameter or buffer is allowed,
    # but registering the parametrization on the old one would run a dtype-changing right_inverse.
    delattr(module, name)
    if is_parameter:
        setattr(module, name, nn.Parameter(stored, requires_grad=False))
    else:
        module.register_buffer(name, stored)
    parametrize.register_parametrization(module, name, forward.to(stored.device), unsafe=True)


def _stored_tensors(module: nn.Module) -> list[tuple[str, torch.Tensor, bool]]:
    """(name, tensor, is_parameter) of the floating tensors `module` itself holds, not yet converted."""
    held = [(n, t, True) for n, t in module.named_parameters(recurse=False)]
    held += [(n, t, False) for n, t in module.named_buffers(recurse=False) if t is not None]
    return [(n, t, p) for n, t, p in held if t.is_floating_point() and not parametrize.is_parametrized(module, n)]


def store_module(module: nn.Module, storage: str) -> nn.Module:
    """Convert `module`'s stored tensors to `storage`, in place (see the module docstring); returns it.

    Idempotent: a tensor already converted is left as it is. No-op for fp32. The module must not
    train afterwards; every converted tensor has requires_grad False."""
    check_storage(storage)
    if storage == "fp32":
        return module
    held = stored_storage(module)
    if held not in ("fp32", storage):
        raise ValueError(f"a module stored as {held} cannot be stored as {storage} too; convert a fresh "
                         "fp32 copy (a block is converted once, when it is frozen)")
    # The parametrizations' own modules (stored originals, scales) are what conversion made: skip them.
    made = {id(m) for sub in module.modules() if parametrize.is_parametrized(sub)
            for m in sub.parametrizations.modules()}
    # Collect first: registering parametrizations adds submodules, which iterating would then visit.
    targets = [(sub, name, tensor, is_parameter) for sub in list(module.modules()) if id(sub) not in made
               for name, tensor, is_parameter in _stored_tensors(sub)]
    for sub, name, tensor, is_parameter in targets:
        if storage in HALF_TYPES:
            _replace(sub, name, tensor.detach().to(HALF_TYPES[storage]), HalfToFloat(), is_parameter)
        elif is_parameter and tensor.dim() >= 2:
            values, scale = quantize_int8(tensor)
            _replace(sub, name, values, Int8Dequant(scale), is_parameter)
    return module


def stored_storage(module: nn.Module) -> str:
    """The storage `module`'s tensors are held in ("fp32" when none is converted); for tests and records."""
    kinds = {type(p).__name__ for sub in module.modules() if parametrize.is_parametrized(sub)
             for plist in sub.parametrizations.values() for p in plist}
    if "Int8Dequant" in kinds:
        return "int8"
    dtypes = {t.dtype for t in [*module.parameters(), *module.buffers()]}
    return next((name for name, dtype in HALF_TYPES.items() if dtype in dtypes), "fp32")
