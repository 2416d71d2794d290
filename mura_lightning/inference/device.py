"""Where inference runs."""

from __future__ import annotations

import torch

from mura_lightning.errors import MuraError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def choose_device(name: str) -> torch.device:
    """The torch device of a `device=` setting: `auto` picks CUDA when there is one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.split(":")[0] not in DEVICE_CHOICES[1:]:
        raise MuraError(f"device={name!r} is not one of {', '.join(DEVICE_CHOICES)} (or cuda:N)")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MuraError(f"device={name} but torch sees no CUDA GPU here: use device=cpu or device=auto")
    return torch.device(name)
