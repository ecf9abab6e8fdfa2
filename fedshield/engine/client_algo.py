"""A MONAI ``ClientAlgo`` as a site's trainer: hand fedshield the ``monai.fl.client.ClientAlgo``
your team already runs (a ``MonaiAlgo`` over a bundle, or your own subclass) and its updates are
protected and compressed like the built-in trainer's.

Each round, :class:`ClientAlgoTrainer` gives the algorithm the global weights in an
``ExchangeObject`` (``WeightType.WEIGHTS``) through ``train``, then takes back ``get_weights``:
full weights or weight differences (``WeightType.WEIGHT_DIFF``), both handled, and writes them
into the model whose exchanged tensors the site protects. Evaluation calls ``evaluate`` with the
global weights and reports the scalar metrics it returns for that site (pooled as a site mean,
weighted by ``n`` where every site gives it). ``initialize`` runs when the trainer joins its
site (with the site's name as ``ExtraItems.CLIENT_NAME``), ``abort`` when training or evaluation
fails, ``finalize`` when the federation is finalized. ``ExchangeObject``, ``WeightType`` and
``ExtraItems`` are MONAI's own (``monai.fl.utils``); the algorithm keeps its phase itself. The
algorithm owns the local loop, so fedshield's ``--local-epochs``, fedprox and fedsgd do not
apply (the last two are refused).
"""

from __future__ import annotations

import torch
from monai.fl.client import ClientAlgo
from monai.fl.utils.constants import ExtraItems, WeightType
from monai.fl.utils.exchange_object import ExchangeObject
from torch import nn

from fedshield.engine.metrics import scalar_metrics
from fedshield.engine.subspace import Subspace
from fedshield.engine.trainer import SUBSPACE_NEEDS_OUR_LOOP, Algorithm, LocalTrainer
from fedshield.errors import ConfigError, WrongShape

__all__ = ["ClientAlgoTrainer"]


class ClientAlgoTrainer(LocalTrainer):
    """One site's trainer that is a MONAI ``ClientAlgo`` (it holds its own data and loop).

    Args:
        algo: the site's ``ClientAlgo``.
        name: the site it belongs to, checked when it joins one (``None``: whichever site it
            is given to); ``initialize`` receives it as ``ExtraItems.CLIENT_NAME``.
    """

    brings_data = True  # the algorithm reads its own data: the site needs no loaders

    def __init__(self, algo: ClientAlgo, *, name: str | None = None) -> None:
        if not isinstance(algo, ClientAlgo):
            raise TypeError(f"algo must be a monai.fl.client.ClientAlgo, got {type(algo).__name__}")
        super().__init__()
        self.algo, self.name, self.joined = algo, name, False

    def join(self, site: str) -> None:
        """Become ``site``'s trainer: ``initialize`` with its name (once; one site only)."""
        if self.joined or (self.name is not None and self.name != site):
            raise ValueError(
                f"this ClientAlgo trainer belongs to site {self.name!r}, not {site!r}: give "
                "each site its own (trainer=[ClientAlgoTrainer(algo_i), ...])"
            )
        self.name, self.joined = site, True
        self.algo.initialize({ExtraItems.CLIENT_NAME: site})

    def local_update(
        self, algorithm: Algorithm, model: nn.Module, loader, epochs: int, *,
        subspace: Subspace | None = None,
    ) -> dict:  # fmt: skip
        """``train`` from ``model``'s (global) weights, then ``get_weights`` into ``model``."""
        if subspace is not None:
            raise ConfigError(SUBSPACE_NEEDS_OUR_LOOP)
        if algorithm.name not in ("fedavg", "fedbn"):
            raise ConfigError(
                f"{algorithm.name} changes the local loop, which a ClientAlgo owns: use fedavg "
                "or fedbn"
            )
        start = _weights(model)  # the algorithm gets its own copy: it may adopt the tensors
        try:
            self.algo.train(
                ExchangeObject(weights=_weights(model), weight_type=WeightType.WEIGHTS), {}
            )
            result = self.algo.get_weights({})
        except Exception:
            self.algo.abort({})
            raise
        model.load_state_dict(self._new_weights(result, start, model))
        return dict(result.statistics or {})

    def _new_weights(self, result, start: dict, model: nn.Module) -> dict:
        if not isinstance(result, ExchangeObject) or not result.is_valid_weights():
            got = "no weights or weight_type" if isinstance(result, ExchangeObject) else (
                type(result).__name__)  # fmt: skip
            raise WrongShape(f"site {self.name}: get_weights must return an ExchangeObject "
                             f"with weights and a weight_type, got {got}")  # fmt: skip
        weights = {k: torch.as_tensor(v) for k, v in result.weights.items()}
        unknown = sorted(set(weights) - set(start))
        if unknown:
            raise WrongShape(f"site {self.name}: get_weights names tensors {unknown[:5]} the "
                             "federation's model does not have")  # fmt: skip
        wrong = [k for k in weights if weights[k].shape != start[k].shape]
        if wrong:
            raise WrongShape(f"site {self.name}: get_weights gives {wrong[0]} the shape "
                             f"{tuple(weights[wrong[0]].shape)}, the model's is "
                             f"{tuple(start[wrong[0]].shape)}")  # fmt: skip
        weights = {k: v.to(start[k].device, start[k].dtype) for k, v in weights.items()}
        if result.weight_type == WeightType.WEIGHT_DIFF:
            return {k: start[k] + weights[k] if k in weights else start[k] for k in start}
        missing = sorted(k for k in start if k not in weights and _travels(model, k))
        if missing:
            raise WrongShape(f"site {self.name}: get_weights misses tensors {missing[:5]}")
        return {k: weights.get(k, start[k]) for k in start}

    def evaluate(self, model: nn.Module) -> dict:
        """The metrics ``evaluate`` returns for ``model``'s (global) weights."""
        data = ExchangeObject(weights=_weights(model), weight_type=WeightType.WEIGHTS)
        try:
            result = self.algo.evaluate(data, {})
        except Exception:
            self.algo.abort({})
            raise
        if not isinstance(result, ExchangeObject) or not isinstance(result.metrics, dict):
            raise WrongShape(f"site {self.name}: evaluate must return an ExchangeObject "
                             "with a metrics dict")  # fmt: skip
        return scalar_metrics(result.metrics, self.name)

    def finalize(self) -> None:
        self.algo.finalize({})


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _travels(model: nn.Module, key: str) -> bool:
    """Whether ``key`` is a floating tensor (integer buffers such as BatchNorm's batch count
    may be left out of full weights)."""
    return model.state_dict()[key].is_floating_point()
