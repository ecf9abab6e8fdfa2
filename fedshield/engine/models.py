"""Networks for small 2D medical images, ours and MONAI's, by name: classifiers, and MONAI's
``UNet`` (``unet``) for segmentation.

``MODELS`` is the one registry (the CLI's ``--model`` choices). Every MONAI network is built
2D, with ``pretrained=False``: nothing is downloaded, weights start at random.

A network whose strides shrink a small image to nothing (MONAI's DenseNets and EfficientNet
on 28x28 MedMNIST images) comes wrapped in :class:`MinSize`, which upsamples smaller inputs
bilinearly to its minimum size first. Inputs of that size or larger pass unchanged.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from fedshield.errors import ConfigError

__all__ = ["MODELS", "MinSize", "ModelEntry", "PadToMultiple", "SmallCNN", "build_model"]


class SmallCNN(nn.Module):
    """Three conv + norm + ReLU blocks, global average pooling and a linear head.

    ``norm="batch"`` (default) uses BatchNorm; ``norm="group"`` uses GroupNorm, which keeps no
    running statistics and so does not suffer when sites average statistics of shifted data.
    """

    def __init__(
        self, in_channels: int = 1, num_classes: int = 2, width: int = 16, norm: str = "batch"
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = [in_channels, width, 2 * width, 4 * width]
        for c_in, c_out in itertools.pairwise(channels):
            layers += [
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out) if norm == "batch" else nn.GroupNorm(4, c_out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels[-1], num_classes)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


class MinSize(nn.Module):
    """``net`` behind a bilinear upsampling of inputs smaller than ``size`` x ``size``.

    Each spatial side below ``size`` is stretched to ``size``; larger sides are kept. The
    wrapped network's tensors are named ``net.<name>``.

    Example:
        >>> model = MinSize(nn.Conv2d(1, 1, 3), size=32)
        >>> model(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 1, 30, 30])
    """

    def __init__(self, net: nn.Module, size: int) -> None:
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"MinSize wraps an nn.Module, got {type(net).__name__}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"MinSize size must be a positive int, got {size!r}")
        self.net, self.size = net, size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if height < self.size or width < self.size:
            target = (max(height, self.size), max(width, self.size))
            x = F.interpolate(x, size=target, mode="bilinear", align_corners=False)
        return self.net(x)


class PadToMultiple(nn.Module):
    """A per-pixel ``net`` on inputs padded (edge values repeated, at the bottom and right) to
    sides that are multiples of ``multiple``, its output cropped back to the input's size.

    A UNet's skip connections need every side divisible by the product of its strides; this
    lets it take any image size. Inputs that fit pass unchanged. Tensors are ``net.<name>``.

    Example:
        >>> model = PadToMultiple(nn.Conv2d(1, 2, 3, padding=1), multiple=4)
        >>> model(torch.zeros(1, 1, 30, 29)).shape
        torch.Size([1, 2, 30, 29])
    """

    def __init__(self, net: nn.Module, multiple: int) -> None:
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"PadToMultiple wraps an nn.Module, got {type(net).__name__}")
        if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
            raise ValueError(f"PadToMultiple multiple must be a positive int, got {multiple!r}")
        self.net, self.multiple = net, multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        bottom, right = -height % self.multiple, -width % self.multiple
        if not (bottom or right):
            return self.net(x)
        padded = F.pad(x, (0, right, 0, bottom), mode="replicate")
        return self.net(padded)[..., :height, :width]


@dataclass(frozen=True)
class ModelEntry:
    """One named network: ``build(in_channels, num_classes)``, the smallest input side it
    takes (smaller inputs are upsampled to it by :class:`MinSize`) and, for a per-pixel
    network, what its input sides must be multiples of (:class:`PadToMultiple`)."""

    build: Callable[[int, int], nn.Module]
    min_size: int = 1
    multiple: int = 1

    def __call__(self, in_channels: int, num_classes: int) -> nn.Module:
        net = self.build(in_channels, num_classes)
        if self.multiple > 1:
            net = PadToMultiple(net, self.multiple)
        return MinSize(net, self.min_size) if self.min_size > 1 else net


def _densenet(depth: int) -> Callable[[int, int], nn.Module]:
    def build(in_channels: int, num_classes: int) -> nn.Module:
        from monai.networks import nets

        net = {121: nets.DenseNet121, 169: nets.DenseNet169, 201: nets.DenseNet201}[depth]
        return net(
            spatial_dims=2, in_channels=in_channels, out_channels=num_classes, pretrained=False
        )

    return build


def _resnet(depth: int) -> Callable[[int, int], nn.Module]:
    def build(in_channels: int, num_classes: int) -> nn.Module:
        from monai.networks.nets import resnet

        net = getattr(resnet, f"resnet{depth}")
        return net(
            pretrained=False, spatial_dims=2, n_input_channels=in_channels,
            num_classes=num_classes,
        )  # fmt: skip

    return build


def _efficientnet(variant: str) -> Callable[[int, int], nn.Module]:
    def build(in_channels: int, num_classes: int) -> nn.Module:
        from monai.networks.nets import EfficientNetBN

        return EfficientNetBN(
            f"efficientnet-{variant}", pretrained=False, spatial_dims=2,
            in_channels=in_channels, num_classes=num_classes,
        )  # fmt: skip

    return build


def _seresnet50(in_channels: int, num_classes: int) -> nn.Module:
    from monai.networks.nets import SEResNet50

    return SEResNet50(
        spatial_dims=2, in_channels=in_channels, num_classes=num_classes, pretrained=False
    )


def _unet(in_channels: int, num_classes: int) -> nn.Module:
    """MONAI's 2D UNet, small enough to train on 28x28 images on a CPU core: 16, 32 and 64
    channels, two stride-2 levels (sides that are not multiples of 4 are padded), two residual
    units per block (95k weights; InstanceNorm, which keeps no running statistics).

    Measured on the synthetic lesions (4 sites, 5 rounds, lr 3e-3, seeds 0-3): pooled Dice
    0.73-0.74; 8/16/32 channels with one unit (12k weights) reached 0.72 with 2 local epochs
    and 0.72-0.74 with 4."""
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=2, in_channels=in_channels, out_channels=num_classes,
        channels=(16, 32, 64), strides=(2, 2), num_res_units=2,
    )  # fmt: skip


# Smallest sides: MONAI's DenseNets 29 (a /4 stem, then three /2 transitions: 28 -> 7 -> 3 ->
# 1 -> 0), EfficientNet-B0 32 ('same' padding fixed for 224 inputs). Both get 32, which their
# strides divide: DenseNet121's last feature map is then 1x1. The ResNets take 8x8 and up.
_UPSIZED = 32

MODELS: dict[str, ModelEntry] = {
    "cnn": ModelEntry(lambda c, k: SmallCNN(c, k)),
    "cnn-gn": ModelEntry(lambda c, k: SmallCNN(c, k, norm="group")),
    "densenet121": ModelEntry(_densenet(121), _UPSIZED),
    "densenet169": ModelEntry(_densenet(169), _UPSIZED),
    "densenet201": ModelEntry(_densenet(201), _UPSIZED),
    "efficientnet-b0": ModelEntry(_efficientnet("b0"), _UPSIZED),
    "resnet10": ModelEntry(_resnet(10)),
    "resnet18": ModelEntry(_resnet(18)),
    "resnet34": ModelEntry(_resnet(34)),
    "resnet50": ModelEntry(_resnet(50)),
    "seresnet50": ModelEntry(_seresnet50),
    "unet": ModelEntry(_unet, multiple=4),  # segmentation: (N, num_classes, H, W) logits
}


def build_model(name: str, *, in_channels: int = 1, num_classes: int = 2) -> nn.Module:
    """A fresh, randomly initialised network from :data:`MODELS`.

    Args:
        name: a key of :data:`MODELS`: ``cnn`` / ``cnn-gn`` (ours, fast) or a MONAI network
            (``densenet121``, ``resnet18``, ``efficientnet-b0``, ..., and ``unet`` for
            segmentation), built 2D, no weights.
        in_channels: image channels (1 for grey, 3 for RGB).
        num_classes: outputs (logits); 2 for binary tasks (segmentation: background, lesion).

    Returns:
        The network; it maps ``(N, in_channels, H, W)`` to ``(N, num_classes)`` logits
        (``unet``: ``(N, num_classes, H, W)``, one per pixel).

    Raises:
        ConfigError: an unknown name, or no channel or no class.
    """
    entry = MODELS.get(name)
    if entry is None:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}")
    for label, value in (("in_channels", in_channels), ("num_classes", num_classes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"model {label} must be a positive int, got {value!r}")
    return entry(in_channels, num_classes)
