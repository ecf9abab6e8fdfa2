"""The run's differential-privacy options (``--dp-*``): which combinations hold up, and the
objects they build (:mod:`fedshield.privacy` for site level, :mod:`.dp_sgd` for record level).
What each placement guarantees: ``docs/privacy.md``.
"""

from __future__ import annotations

import json
import math
import warnings
from typing import TYPE_CHECKING

from torch import nn

from fedshield.crypto.ddg import DiscreteGaussianEncoding
from fedshield.errors import ConfigError, InvalidMessage
from fedshield.privacy import DPConfig
from fedshield.protocols.registry import ProtocolSpec

if TYPE_CHECKING:
    from fedshield.engine.experiment import RunConfig
    from fedshield.engine.trainer import LocalTrainer

__all__ = [
    "DEFAULT_CLIP",
    "DEFAULT_DELTA",
    "check_options",
    "dp_config",
    "dp_model",
    "dp_trainer",
    "noise_floor",
    "site_spent",
    "with_distributed_noise",
    "worst_spent",
]

DEFAULT_CLIP, DEFAULT_DELTA = 1.0, 1e-5


def check_options(config: RunConfig) -> None:
    """Refuse, naming the option, every ``--dp-*`` set that would train without the privacy
    it reports, and validate the values (a calibration target must be reachable)."""
    given = [f"--dp-{n}" for n in ("epsilon", "noise") if getattr(config, f"dp_{n}") is not None]
    if not config.dp_sgd and config.dp_mode is None:
        extra = given + [f"--dp-{n}" for n in ("clip", "delta", "colluders")
                         if getattr(config, f"dp_{n}") is not None]  # fmt: skip
        if extra:
            raise ConfigError(f"{' and '.join(extra)} need --dp-mode or --dp-sgd")
        return
    if config.dp_sgd and config.dp_mode is not None:
        raise ConfigError("--dp-sgd (record level) and --dp-mode (site level): choose one")
    if len(given) != 1:
        raise ConfigError("give exactly one of --dp-epsilon and --dp-noise")
    for name in ("epsilon", "noise", "clip", "delta"):
        value = getattr(config, f"dp_{name}")
        if value is not None and not math.isfinite(value):
            raise ConfigError(f"--dp-{name} must be a finite number, got {value}")
    if config.dp_sgd:
        _check_dp_sgd(config)
    else:
        _check_site_level(config)


def _check_site_level(config: RunConfig) -> None:
    if config.dp_mode == "distributed":
        _check_distributed(config)
    if config.dp_mode == "central" and (config.protect != "plain" or config.quant_bits):
        raise ConfigError(
            "--dp-mode central adds the noise to the exact sum of clipped updates: quantizing "
            f"protection ({config.protect}, {config.quant_bits or 32}-bit) can push an update "
            "past --dp-clip before it is summed. Use --protect plain (float32), or --dp-mode "
            "local (the sites noise first; quantizing is then harmless)"
        )
    if config.dp_mode == "central" and config.error_feedback:
        raise ConfigError(
            "--dp-mode central with --error-feedback would send earlier rounds' residual "
            "beside the clipped update (past --dp-clip): drop --error-feedback"
        )
    dp_config(config)  # validates the values; the target must be reachable


def _check_distributed(config: RunConfig) -> None:
    if config.protect not in ("secagg", "he") or (
        config.protect == "he" and config.he_scheme != "bfv"
    ):
        raise ConfigError(
            "--dp-mode distributed adds integer noise inside secure aggregation or BFV: use "
            f"--protect secagg or --protect he --he-scheme bfv (got {config.protect}"
            f"{'/' + config.he_scheme if config.protect == 'he' else ''}), or --dp-mode local"
        )
    if config.clip is not None:
        raise ConfigError(
            "--dp-mode distributed encodes every update on its own integer grid, bounded by "
            "--dp-clip (L2): drop --clip"
        )


def _check_dp_sgd(config: RunConfig) -> None:
    if config.algorithm != "fedavg":
        raise ConfigError(
            f"--dp-sgd trains with fedavg (got {config.algorithm}: fedbn keeps BatchNorm, "
            "which DP-SGD replaces; fedsgd and fedprox change the gradient it clips)"
        )
    clip = DEFAULT_CLIP if config.dp_clip is None else config.dp_clip
    delta = DEFAULT_DELTA if config.dp_delta is None else config.dp_delta
    if not clip > 0 or not 0 < delta < 1 or (config.dp_noise or 0) < 0:
        raise ConfigError(
            f"--dp-clip must be positive, --dp-delta in (0, 1) and --dp-noise >= 0 (got "
            f"{clip}, {delta}, {config.dp_noise})"
        )
    if config.dp_epsilon is not None and not config.dp_epsilon > 0:
        raise ConfigError(f"--dp-epsilon must be positive, got {config.dp_epsilon}")


def dp_config(config: RunConfig) -> DPConfig | None:
    """Site-level DP-FedAvg's parameters (``None`` without ``--dp-mode``)."""
    if config.dp_mode is None:
        return None
    common = dict(
        mode=config.dp_mode, rounds=config.rounds, sites=config.sites,
        clip=DEFAULT_CLIP if config.dp_clip is None else config.dp_clip,
        delta=DEFAULT_DELTA if config.dp_delta is None else config.dp_delta,
        colluders=config.dp_colluders,
    )  # fmt: skip
    if config.dp_epsilon is not None:
        return DPConfig.calibrated(target_epsilon=config.dp_epsilon, **common)
    return DPConfig(noise_multiplier=config.dp_noise, **common)


def noise_floor(protocol: ProtocolSpec, sites: int) -> int:
    """``t``: the fewest sites a sum under distributed DP may hold: ``secagg``'s smallest
    round (its Shamir threshold, which every site pins from the roster and no stage goes
    below), ``he``'s a majority (the decrypting sites refuse a sum counting fewer)."""
    if protocol.name == "he":
        return max(protocol.min_sites(sites), sites // 2 + 1)
    return protocol.min_sites(sites)


def with_distributed_noise(
    protocol: ProtocolSpec, privacy: DPConfig | None, *, dim: int, sites: int
) -> ProtocolSpec:  # fmt: skip
    """``protocol`` summing distributed DP's noisy levels when ``privacy`` asks for them
    (:class:`~fedshield.crypto.ddg.DiscreteGaussianEncoding`: each site adds
    ``1 / sqrt(t - c)`` of the noise, ``t`` = :func:`noise_floor`, ``c`` the privacy's
    colluders); otherwise ``protocol`` itself."""
    if privacy is None or privacy.mode != "distributed":
        return protocol
    t = noise_floor(protocol, sites)
    colluders = min(1, t - 1) if privacy.colluders is None else privacy.colluders
    if colluders >= t:
        raise ConfigError(
            f"--dp-colluders {colluders}: a round may hold as few as {t} sites, so no honest "
            f"site's noise would be left; at most {t - 1} (or more sites, or --threshold)"
        )
    encoding = DiscreteGaussianEncoding.for_target(
        clip=privacy.clip, dim=dim, noise_multiplier=privacy.noise_multiplier,
        min_sites=t, colluders=colluders,
    )  # fmt: skip
    return protocol.with_noise(encoding)


def dp_trainer(config: RunConfig, optimizer_factory) -> LocalTrainer:
    """The record-level DP-SGD trainer ``--dp-sgd`` asks for (imports Opacus)."""
    from fedshield.engine.dp_sgd import DPSGDTrainer

    return DPSGDTrainer(
        clip=DEFAULT_CLIP if config.dp_clip is None else config.dp_clip,
        delta=DEFAULT_DELTA if config.dp_delta is None else config.dp_delta,
        rounds=config.rounds, epochs=config.local_epochs, noise_multiplier=config.dp_noise,
        target_epsilon=config.dp_epsilon, optimizer_factory=optimizer_factory,
    )  # fmt: skip


def dp_model(model: nn.Module) -> nn.Module:
    """``model`` as DP-SGD trains it, saying so when its BatchNorm becomes GroupNorm."""
    from fedshield.engine.dp_sgd import private_model

    fixed = private_model(model)
    if fixed is not model:
        warnings.warn(
            "--dp-sgd: the model's BatchNorm layers are replaced by GroupNorm (Opacus's "
            "ModuleValidator.fix: BatchNorm mixes the examples of a batch)",
            stacklevel=2,
        )
    return fixed


def worst_spent(spent: list[dict]) -> dict:
    """Several DP-SGD records (sites, or their trainers) as one: the largest epsilon, with
    every site's ``(sigma, epsilon)``."""
    worst = max(spent, key=lambda s: s["epsilon"] if s["epsilon"] is not None else math.inf)
    pairs = [pair for s in spent for pair in s.get("per_site_sigma_epsilon", [])]
    return {**worst, "per_site_sigma_epsilon": pairs}


def site_spent(raw: bytes) -> dict:
    """A site's DP-SGD record as it arrives (JSON, :meth:`privacy_spent
    <fedshield.engine.trainer.LocalTrainer.privacy_spent>`), checked before it is pooled.

    Raises:
        InvalidMessage: anything but an object with a string ``dp_mode``, numbers ``clip``,
            ``noise_multiplier`` and ``delta``, an ``epsilon`` that is a number or null, and
            optionally ``per_site_sigma_epsilon``, a list of ``[sigma, epsilon]`` pairs.
    """
    try:
        spent = json.loads(bytes(raw).decode())
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidMessage(f"a site's DP-SGD record is not JSON ({exc})") from None

    def number(v, none: bool = False) -> bool:
        return (v is None and none) or (isinstance(v, int | float) and not isinstance(v, bool))

    pairs = spent.get("per_site_sigma_epsilon", []) if isinstance(spent, dict) else None
    valid = (
        isinstance(spent, dict)
        and isinstance(spent.get("dp_mode"), str)
        and all(number(spent.get(k)) for k in ("clip", "noise_multiplier", "delta"))
        and number(spent.get("epsilon"), none=True)
        and isinstance(pairs, list)
        and all(isinstance(p, list) and len(p) == 2 and all(map(number, p)) for p in pairs)
    )
    if not valid:
        raise InvalidMessage(
            "a site's DP-SGD record must be an object with dp_mode, clip, noise_multiplier, "
            "delta, epsilon (a number or null) and per_site_sigma_epsilon ([sigma, epsilon] "
            f"pairs), got {bytes(raw)[:80]!r}"
        )
    return spent
