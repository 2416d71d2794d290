"""torchvision DenseNet-169 / ResNet-50 with a one-logit head, optional ImageNet weights and grayscale input."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision import models

from mura_lightning.errors import MuraError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one torchvision architecture; where its first convolution and classifier live, and the layer
    whose activations class activation maps are made of."""

    builder: Callable[..., nn.Module]
    weights_enum: type[models.WeightsEnum]
    first_conv: str
    classifier: str
    cam_layer: str


BACKBONES: dict[str, BackboneSpec] = {
    # CAMs: DenseNet's last dense block's final batch norm (norm5); ResNet's layer4[-1], the last bottleneck.
    "densenet169": BackboneSpec(
        models.densenet169, models.DenseNet169_Weights, "features.conv0", "classifier", "features.norm5"
    ),
    "resnet50": BackboneSpec(models.resnet50, models.ResNet50_Weights, "conv1", "fc", "layer4.2"),
}

# Old DenseNet checkpoints name layers `norm.1`; torchvision renames them to `norm1` when it loads them.
_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


SHOWN_KEYS = 3


class PretrainedWeightsError(MuraError):
    """ImageNet weights were asked for but cannot be found or read."""


def backbone_spec(name: str) -> BackboneSpec:
    """The spec of a backbone by name; an unknown name is an error listing the choices."""
    if name not in BACKBONES:
        raise MuraError(f"unknown backbone {name!r}: choose one of {', '.join(BACKBONES)}")
    return BACKBONES[name]


def cam_target_layer(net: nn.Module, name: str) -> nn.Module:
    """The layer of a `name` network (built by `build_backbone`) whose activations class activation maps use."""
    return net.get_submodule(backbone_spec(name).cam_layer)


def expected_weights_file(name: str, weights: str) -> Path:
    """Where torch hub keeps the ImageNet weights of a backbone ($TORCH_HOME/hub/checkpoints/<file>)."""
    url = _weights_entry(name, weights).url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def _weights_entry(name: str, weights: str) -> models.WeightsEnum:
    enum = backbone_spec(name).weights_enum
    try:
        return enum[weights]
    except KeyError:
        raise MuraError(
            f"model.backbone.weights={weights!r} is not a {enum.__name__} entry: choose one of "
            f"{', '.join(enum.__members__)}"
        ) from None


def load_imagenet_state(name: str, weights: str, weights_path: str | None) -> dict[str, torch.Tensor]:
    """The ImageNet state dict of a backbone: from `weights_path`, else the torch hub cache (downloading there
    when online). Never falls back to random weights: a missing file is a PretrainedWeightsError saying where
    to put it."""
    if weights_path:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise PretrainedWeightsError(f"model.backbone.weights_path={path} does not exist")
    else:
        path = expected_weights_file(name, weights)
        if not path.is_file():
            url = _weights_entry(name, weights).url
            try:
                torch.hub.load_state_dict_from_url(url, progress=False)
            except Exception as err:
                raise PretrainedWeightsError(
                    f"model.backbone.pretrained=true needs the ImageNet weights of {name}, but {path} is not "
                    f"there and downloading {url} failed ({err}). Download that file on a machine with "
                    f"internet and copy it to {path} (the torch hub cache, under $TORCH_HOME), or pass "
                    "model.backbone.weights_path=FILE; model.backbone.pretrained=false trains from scratch."
                ) from err
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise PretrainedWeightsError(f"cannot read ImageNet weights from {path}: {err}") from err
    log.info("ImageNet weights for %s from %s", name, path)
    return {_DENSENET_OLD_KEY.sub(r"\1\2", key): value for key, value in state.items()}


def _replace(module: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    setattr(module.get_submodule(parent_name) if parent_name else module, child, new)


def _to_grayscale_input(model: nn.Module, conv_name: str) -> None:
    """Make the first convolution take one channel, its filters the sum of the RGB filters."""
    conv: nn.Conv2d = model.get_submodule(conv_name)
    gray = nn.Conv2d(
        1,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        gray.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
        if conv.bias is not None:
            gray.bias.copy_(conv.bias)
    _replace(model, conv_name, gray)


def state_dict_mismatch(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> str | None:
    """How `given` differs from the keys and shapes of `expected`, as a short sentence; None when it fits."""
    missing = sorted(expected.keys() - given.keys())
    unexpected = sorted(given.keys() - expected.keys())
    misshapen = sorted(k for k in expected.keys() & given.keys() if expected[k].shape != given[k].shape)
    details = [
        f"{len(keys)} {what} (e.g. {', '.join(keys[:SHOWN_KEYS])})"
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", misshapen))
        if keys
    ]
    return f"{'; '.join(details)} keys" if details else None


def _load_exactly(model: nn.Module, state: dict[str, torch.Tensor], name: str) -> None:
    """Load every weight of `state` into `model`; keys or shapes that do not match are a PretrainedWeightsError."""
    mismatch = state_dict_mismatch(model.state_dict(), state)
    if mismatch:
        raise PretrainedWeightsError(f"the ImageNet weights do not fit {name}: {mismatch}")
    model.load_state_dict(state)


def build_backbone(
    name: str, pretrained: bool, in_chans: int, weights: str = "DEFAULT", weights_path: str | None = None
) -> nn.Module:
    """A torchvision `name` network whose classifier gives one logit; `in_chans=1` sums the first filters over RGB.

    With `pretrained`, the ImageNet weights are loaded first (see `load_imagenet_state`).
    """
    spec = backbone_spec(name)
    if in_chans not in (1, 3):
        raise MuraError(f"model.preprocessing.in_chans={in_chans} is not supported: use 1 or 3")
    model = spec.builder(weights=None)
    if pretrained:
        _load_exactly(model, load_imagenet_state(name, weights, weights_path), name)
    if in_chans == 1:
        _to_grayscale_input(model, spec.first_conv)
    head: nn.Linear = model.get_submodule(spec.classifier)
    _replace(model, spec.classifier, nn.Linear(head.in_features, 1))
    return model


def head_of(net: nn.Module, name: str) -> nn.Linear:
    """The one-logit head of a `name` network built by `build_backbone`."""
    return net.get_submodule(backbone_spec(name).classifier)


def take_head(net: nn.Module, name: str) -> nn.Linear:
    """Take the one-logit head out of a `name` network, leaving an identity in its place (the network then gives
    its embeddings), and return it."""
    head = head_of(net, name)
    _replace(net, backbone_spec(name).classifier, nn.Identity())
    return head
