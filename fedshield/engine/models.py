"""Networks for binary classification of small 2D medical images."""

from __future__ import annotations

import itertools

from torch import nn

from fedshield.errors import ConfigError

__all__ = ["MODELS", "SmallCNN", "build_model"]


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


def _densenet121(in_channels: int, num_classes: int) -> nn.Module:
    from monai.networks.nets import DenseNet121

    return DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=num_classes)


def _resnet18(in_channels: int, num_classes: int) -> nn.Module:
    from monai.networks.nets import resnet18

    return resnet18(spatial_dims=2, n_input_channels=in_channels, num_classes=num_classes)


MODELS = {
    "cnn": lambda c, k: SmallCNN(c, k),
    "cnn-gn": lambda c, k: SmallCNN(c, k, norm="group"),
    "resnet18": _resnet18,
    "densenet121": _densenet121,
}


def build_model(name: str, *, in_channels: int = 1, num_classes: int = 2) -> nn.Module:
    """A fresh network: ``cnn`` / ``cnn-gn`` (ours, fast), MONAI's ``resnet18``/``densenet121``."""
    try:
        factory = MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; choose one of {sorted(MODELS)}") from None
    return factory(in_channels, num_classes)
