"""The device check's section 2: the device computes what the CPU computes, on the same inputs.

- augmentation: CUDA and CPU generators give different streams, so the random parameters (crop
  offsets, flips, brightness factors) are drawn once on the CPU, in the order Augmentation.train
  draws them, and the same crop/flip/jitter/normalize is applied on both devices. That this
  replay is Augmentation.train itself is checked first, on the CPU, bit for bit;
- herding: the same features give the same exemplar order;
- NME: the same features and class means give the same predictions wherever the nearest mean is
  clearly nearest (a tie within float rounding may go either way).
On a CPU-only machine the device is the CPU itself: a smoke test of this code path.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from methods.exemplars import herding_order

from benchmark.train.augmentation import Augmentation, crop_and_flip
from benchmark.train.evaluation import nme_predict

if TYPE_CHECKING:
    from benchmark.tools.sections import Section

AUGMENT_TOLERANCE = 1e-5   # normalized pixels (about 4 units): float rounding, not a wrong pixel
NME_CLEAR_GAP = 1e-4       # distance gap between the nearest and second-nearest mean


def augmentation_parameters(augmentation: Augmentation, n: int, generator: torch.Generator) -> dict:
    """The random parameters of Augmentation.train for `n` images, drawn in its order."""
    shifts = 2 * augmentation.padding + 1
    dy = torch.randint(0, shifts, (n,), generator=generator)
    dx = torch.randint(0, shifts, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    factor = 1 + (torch.rand(n, generator=generator) * 2 - 1) * augmentation.brightness
    return {"dy": dy, "dx": dx, "flip": flip, "factor": factor}


def augment_with(augmentation: Augmentation, images: torch.Tensor, parameters: dict) -> torch.Tensor:
    """Augmentation.train's pixels with given parameters, on the images' device."""
    p = {key: value.to(images.device) for key, value in parameters.items()}
    x = crop_and_flip(images, augmentation.padding, p["dy"], p["dx"], p["flip"]).float().div_(255)
    x = x.mul_(p["factor"][:, None, None, None]).clamp_(0, 1)
    return augmentation._standardize(x)


def augmentation_problems(augmentation: Augmentation, images: torch.Tensor, device: torch.device) -> list[str]:
    images = images.cpu()
    parameters = augmentation_parameters(augmentation, len(images), torch.Generator().manual_seed(7))
    on_cpu = augment_with(augmentation, images, parameters)
    reference = augmentation.train(images, torch.Generator().manual_seed(7))
    if not torch.equal(on_cpu, reference):
        return ["the check's replay of the augmentation no longer matches Augmentation.train on the CPU: "
                "update benchmark/tools/check_parity.py (augmentation_parameters, augment_with) to its new steps"]
    on_device = augment_with(augmentation, images.to(device), parameters)
    problems = []
    layouts = [x.is_contiguous(memory_format=torch.channels_last) for x in (on_device, on_cpu)]
    if layouts[0] != layouts[1]:
        problems.append("the augmented batch's memory layout differs between the CPU and the device")
    difference = (on_device.cpu() - on_cpu).abs().max().item()
    if difference > AUGMENT_TOLERANCE:
        problems.append(f"augmented pixels differ by up to {difference:.2e} (tolerance {AUGMENT_TOLERANCE:.0e})")
    return problems


def herding_problems(device: torch.device, count: int = 50) -> list[str]:
    features = torch.randn(300, 64, generator=torch.Generator().manual_seed(11))
    on_cpu = herding_order(features, count)
    on_device = herding_order(features.to(device), count).cpu()
    if torch.equal(on_cpu, on_device):
        return []
    first = int((on_cpu != on_device).nonzero()[0])
    return [f"herding orders differ from pick {first + 1} of {count} (CPU {on_cpu[first].item()}, "
            f"device {on_device[first].item()})"]


def nme_problems(device: torch.device) -> tuple[list[str], int]:
    """(problems, predictions compared) of nme_predict on the CPU and the device."""
    generator = torch.Generator().manual_seed(13)
    features = torch.randn(2000, 64, generator=generator)
    means = torch.nn.functional.normalize(torch.randn(20, 64, generator=generator), dim=1)
    on_cpu = nme_predict(features, means)
    on_device = nme_predict(features.to(device), means.to(device)).cpu()
    distances = torch.cdist(torch.nn.functional.normalize(features, dim=1), means).sort(dim=1).values
    clear = (distances[:, 1] - distances[:, 0]) > NME_CLEAR_GAP
    wrong = int(((on_cpu != on_device) & clear).sum())
    if wrong:
        return [f"NME predictions differ on {wrong} of {int(clear.sum())} images whose nearest mean is clear"], \
            len(features)
    return [], len(features)


def section_parity(section: Section, augmentation: Augmentation, images: torch.Tensor, device: torch.device) -> None:
    """Fill `section` with the parity checks of `device` against the CPU."""
    versus = "CPU vs CPU (no CUDA here: a smoke test of the code path)" if device.type == "cpu" else f"CPU vs {device}"
    section.note(versus)
    for name, problems in (("augmentation", augmentation_problems(augmentation, images, device)),
                           ("herding", herding_problems(device))):
        for problem in problems:
            section.fail(f"{name}: {problem}")
        if not problems:
            section.note(f"{name}: same result on {len(images) if name == 'augmentation' else 300} inputs")
    problems, compared = nme_problems(device)
    for problem in problems:
        section.fail(f"NME: {problem}")
    if not problems:
        section.note(f"NME: same predictions on {compared} features (ties within {NME_CLEAR_GAP:.0e} excepted)")
