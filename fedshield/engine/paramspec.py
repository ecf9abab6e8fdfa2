"""``ParamSpec``: a model's exchanged state as one contiguous float32 vector, and back."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

__all__ = ["LOCAL_NORMS", "ParamEntry", "ParamSpec"]

# FedBN's local layers: every BatchNorm (1d/2d/3d, lazy, sync: torch's classes, which MONAI's
# Norm factory builds too) and InstanceNorm (its affine and, when tracked, running statistics
# describe one site's features as BatchNorm's do). GroupNorm and LayerNorm keep no statistics
# of the data; their affine tensors travel like any weight.
LOCAL_NORMS: tuple[type[nn.Module], ...] = (_BatchNorm, _InstanceNorm)


@dataclass(frozen=True)
class ParamEntry:
    """Where one named tensor lives in the flat vector."""

    name: str
    shape: tuple[int, ...]
    offset: int
    size: int
    trainable: bool


def _local_norm_tensors(model: nn.Module) -> frozenset[str]:
    """The state-dict names of the tensors that :data:`LOCAL_NORMS` layers own themselves."""
    names = set()
    for prefix, module in model.named_modules():
        if isinstance(module, LOCAL_NORMS):
            owned = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
            names.update(f"{prefix}.{name}" if prefix else name for name, _ in owned)
    return frozenset(names)


class ParamSpec:
    """Maps a model's exchanged tensors to offsets of one flat float32 vector. Computed once.

    Trainable parameters come first (``[0, n_trainable)``), then floating-point buffers such as
    BatchNorm running statistics. Integer buffers (``num_batches_tracked``) never travel. With
    ``exclude_batchnorm=True`` (FedBN, Li et al., ICLR 2021) every tensor of the
    normalisation layers in :data:`LOCAL_NORMS` (BatchNorm, InstanceNorm: weight, bias,
    running mean and variance) stays local too, as the paper keeps its BN layers; GroupNorm
    and LayerNorm normalise each example by itself, hold no data statistics, and travel.

    Example:
        >>> spec = ParamSpec.from_module(nn.Linear(3, 2))
        >>> spec.dim, spec.n_trainable
        (8, 8)
        >>> vec = spec.flatten(nn.Linear(3, 2).state_dict())
    """

    def __init__(self, entries: list[ParamEntry]) -> None:
        self.entries = tuple(entries)
        self.dim = sum(e.size for e in entries)
        self.n_trainable = sum(e.size for e in entries if e.trainable)
        self.names = frozenset(e.name for e in entries)
        self.sizes = tuple(e.size for e in entries)  # values per tensor, in vector order

    @classmethod
    def from_module(cls, model: nn.Module, *, exclude_batchnorm: bool = False) -> ParamSpec:
        """Build the spec of ``model``; normalisation layers' tensors (:data:`LOCAL_NORMS`)
        are left out when asked (FedBN)."""
        local = _local_norm_tensors(model) if exclude_batchnorm else frozenset()

        def exchanged(name: str, tensor: torch.Tensor) -> bool:
            return tensor.is_floating_point() and name not in local

        entries: list[ParamEntry] = []
        offset = 0
        params = [(n, p, True) for n, p in model.named_parameters()]
        buffers = [(n, b, False) for n, b in model.named_buffers()]
        for name, tensor, trainable in params + buffers:
            if exchanged(name, tensor):
                entries.append(
                    ParamEntry(name, tuple(tensor.shape), offset, tensor.numel(), trainable)
                )
                offset += tensor.numel()
        return cls(entries)

    def flatten(self, state: dict[str, torch.Tensor] | nn.Module) -> np.ndarray:
        """The exchanged tensors of ``state`` (a state dict or a module) as one float32 vector."""
        if isinstance(state, nn.Module):
            state = state.state_dict()
        out = np.empty(self.dim, dtype=np.float32)
        for e in self.entries:
            out[e.offset : e.offset + e.size] = (
                state[e.name].detach().reshape(-1).to(torch.float32).cpu().numpy()
            )
        return out

    def unflatten(self, vector: np.ndarray) -> dict[str, torch.Tensor]:
        """Tensors (copies) named and shaped as in the model, from a flat vector."""
        vector = self._check(vector)
        return {
            e.name: torch.from_numpy(vector[e.offset : e.offset + e.size].copy()).reshape(e.shape)
            for e in self.entries
        }

    def load_into(self, model: nn.Module, vector: np.ndarray) -> None:
        """Copy the flat vector into ``model``'s tensors; tensors outside the spec are untouched."""
        vector = np.array(self._check(vector))  # a writable copy for torch.from_numpy
        state = model.state_dict()
        with torch.no_grad():
            for e in self.entries:
                chunk = torch.from_numpy(vector[e.offset : e.offset + e.size])
                state[e.name].copy_(chunk.reshape(e.shape))

    def clamp_variances(self, vector: np.ndarray) -> np.ndarray:
        """Clip BatchNorm running variances at 0 in place. Quantization noise in an aggregate
        can push a tiny variance below 0, and ``sqrt(var + eps)`` would then be NaN."""
        for e in self.entries:
            if e.name.endswith("running_var"):
                np.maximum(
                    vector[e.offset : e.offset + e.size],
                    0.0,
                    out=vector[e.offset : e.offset + e.size],
                )
        return vector

    def local_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Copies of the tensors that never travel (FedBN's BatchNorm, integer buffers)."""
        return {k: v.detach().clone() for k, v in model.state_dict().items() if k not in self.names}

    def sha256(self, vector: np.ndarray) -> str:
        """SHA-256 of the exchanged state dict that ``vector`` holds: each tensor's name, shape
        and float32 little-endian bytes, in order. Equal digests mean bit-identical models."""
        vector = self._check(vector)
        digest = hashlib.sha256()
        for e in self.entries:
            digest.update(f"{e.name}:{','.join(map(str, e.shape))};".encode())
            digest.update(vector[e.offset : e.offset + e.size].astype("<f4", copy=False).tobytes())
        return digest.hexdigest()

    def _check(self, vector: np.ndarray) -> np.ndarray:
        vector = np.asarray(vector)
        if vector.shape != (self.dim,) or vector.dtype != np.float32:
            raise ValueError(
                f"expected a float32 vector of length {self.dim}, got {vector.dtype} {vector.shape}"
            )
        return vector
