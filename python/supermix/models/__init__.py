"""Model zoo: the CIFAR networks of the paper's distillation tables, and torchvision models.

>>> from supermix import models
>>> net = models.create("resnet20", num_classes=10, in_channels=1)   # Fashion-MNIST teacher
>>> "wrn_40_2" in models.available()
True

Every zoo network takes ``num_classes`` and ``in_channels`` and pools adaptively, so the same
constructor runs on 1x28x28 (Fashion-MNIST) and 3x32x32 (CIFAR) inputs. ``tv:<name>`` builds a
torchvision classifier (e.g. ``tv:resnet50``) for ImageNet-size inputs, with random weights
unless ``pretrained=True`` asks for torchvision's default weights (a download on first use).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..errors import UsageError
from . import mobilenetv2 as _mobilenetv2
from . import resnet as _resnet
from . import shufflenet as _shufflenet
from . import vgg as _vgg
from . import wrn as _wrn

__all__ = ["create", "check_name", "available", "register", "REGISTRY"]

REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "resnet8": _resnet.resnet8,
    "resnet14": _resnet.resnet14,
    "resnet20": _resnet.resnet20,
    "resnet32": _resnet.resnet32,
    "resnet44": _resnet.resnet44,
    "resnet56": _resnet.resnet56,
    "resnet110": _resnet.resnet110,
    "resnet8x4": _resnet.resnet8x4,
    "resnet32x4": _resnet.resnet32x4,
    "wrn_16_1": _wrn.wrn_16_1,
    "wrn_16_2": _wrn.wrn_16_2,
    "wrn_40_1": _wrn.wrn_40_1,
    "wrn_40_2": _wrn.wrn_40_2,
    "vgg8": _vgg.vgg8,
    "vgg11": _vgg.vgg11,
    "vgg13": _vgg.vgg13,
    "vgg16": _vgg.vgg16,
    "vgg19": _vgg.vgg19,
    "mobilenetv2": _mobilenetv2.mobilenetv2,
    "mobilenetv2_full": _mobilenetv2.mobilenetv2_full,
    "shufflenetv1": _shufflenet.shufflenetv1,
    "shufflenetv2": _shufflenet.shufflenetv2,
}

# Torchvision classifiers offered as "tv:<name>"; others in torchvision.models work too.
_TV_LISTED = ("resnet18", "resnet34", "resnet50", "resnet101", "wide_resnet50_2",
              "mobilenet_v2", "shufflenet_v2_x1_0", "vgg13_bn", "vgg16_bn", "densenet121",
              "efficientnet_b0", "convnext_tiny", "vit_b_16")


def register(name: str, constructor: Callable[..., nn.Module]) -> None:
    """Add a constructor ``f(num_classes=..., in_channels=...) -> nn.Module`` to the zoo."""
    if name in REGISTRY or name.startswith("tv:"):
        raise UsageError(f"name: expected a new model name, got {name!r}, which is taken")
    REGISTRY[name] = constructor


def available() -> list[str]:
    """Zoo names, then the listed torchvision ones as ``tv:<name>``."""
    return sorted(REGISTRY) + [f"tv:{n}" for n in _TV_LISTED]


def _normalise_name(name: str) -> str:
    key = name.strip().lower().replace("-", "_")
    aliases = {"mobilenet_v2": "mobilenetv2", "shufflenet_v1": "shufflenetv1",
               "shufflenet_v2": "shufflenetv2", "shufflev1": "shufflenetv1",
               "shufflev2": "shufflenetv2", "mobile_half": "mobilenetv2"}
    key = aliases.get(key, key)
    if key.startswith("wrn") and not key.startswith("wrn_"):   # wrn16_2 -> wrn_16_2
        key = "wrn_" + key[3:]
    return key


def check_name(name: str) -> None:
    """Raise :class:`UsageError` unless ``name`` is a zoo name or ``tv:`` and a torchvision
    model (what :func:`create` takes), before anything is built."""
    if not isinstance(name, str):
        raise UsageError(f"name: expected a model name string, got {type(name).__name__}")
    if name.startswith("tv:"):
        import torchvision

        known = torchvision.models.list_models(module=torchvision.models)
        if name[3:] not in known:
            raise UsageError(f"name: expected 'tv:' followed by one of "
                             f"{', '.join(sorted(known))}, got {name!r}")
        return
    if _normalise_name(name) not in REGISTRY:
        raise UsageError(f"name: expected one of {', '.join(available())}, got {name!r}")


def create(name: str, num_classes: int = 10, in_channels: int = 3, pretrained: bool = False,
           **kwargs) -> nn.Module:
    """Build a network by name.

    Args:
        name: a zoo name from :func:`available` (e.g. "resnet20", "wrn_40_2", "resnet8x4") or
            "tv:<torchvision model name>".
        num_classes: size of the output layer.
        in_channels: channels of the input images.
        pretrained: torchvision models only: load torchvision's default weights (downloads on
            first use; the classifier is replaced when num_classes differs from theirs).

    Raises:
        UsageError (a ValueError) for an unknown name or bad sizes.
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise UsageError(f"num_classes: expected an integer >= 1, got {num_classes!r}")
    if not isinstance(in_channels, int) or in_channels < 1:
        raise UsageError(f"in_channels: expected an integer >= 1, got {in_channels!r}")
    check_name(name)
    if name.startswith("tv:"):
        return _torchvision_model(name[3:], num_classes, in_channels, pretrained, **kwargs)
    key = _normalise_name(name)
    if pretrained:
        raise UsageError(f"pretrained: only torchvision models ('tv:...') have pretrained "
                         f"weights, got pretrained=True for {name!r}")
    return REGISTRY[key](num_classes=num_classes, in_channels=in_channels, **kwargs)


def _torchvision_model(name: str, num_classes: int, in_channels: int, pretrained: bool,
                       **kwargs) -> nn.Module:
    import torchvision

    if pretrained:
        model = torchvision.models.get_model(name, weights="DEFAULT", **kwargs)
        _replace_classifier(model, num_classes)
    else:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    if in_channels != 3:
        _replace_first_conv(model, in_channels)
    return model


def _replace_classifier(model: nn.Module, num_classes: int) -> None:
    last_name, last = None, None
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last_name, last = module_name, module
    if last is None or last.out_features == num_classes:
        return
    _set_submodule(model, last_name, nn.Linear(last.in_features, num_classes))


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.groups == 1:
            conv = nn.Conv2d(in_channels, module.out_channels, module.kernel_size, module.stride,
                             module.padding, module.dilation, bias=module.bias is not None)
            with torch.no_grad():
                # Keeps pretrained filters meaningful: the mean RGB filter on every channel,
                # scaled so a grey input gives the same response as before.
                mean = module.weight.mean(dim=1, keepdim=True)
                conv.weight.copy_(mean.expand(-1, in_channels, -1, -1) * (3 / in_channels))
                if module.bias is not None:
                    conv.bias.copy_(module.bias)
            _set_submodule(model, module_name, conv)
            return
    raise UsageError(f"in_channels: this torchvision model has no Conv2d stem to adapt, "
                     f"got in_channels={in_channels}")


def _set_submodule(model: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
