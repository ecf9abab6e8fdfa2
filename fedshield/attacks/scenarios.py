"""The privacy benchmark's scenarios: real rounds of the engine, attacked as its server would.

Gradient inversion (:mod:`.inversion`) on what the server sees of one round:

- ``plain`` FedSGD at batch 1 (each site holds one image) and batch 4, and FedAvg (several
  local Adam steps, attacked as one gradient and by simulating the steps, :mod:`.unrolled`):
  the server reads each site's update from its message;
- ``secagg`` with 4 sites at batch 1: the server learns only the sum, attacked as one image
  and as four (one per site, each normalising its own batch); with 10 sites, as one image;
- threshold ``he`` with 4 sites: the sum the server decrypts from the partials (:mod:`.he_view`);
- ``plain`` under local DP (each site clips and noises its update), and ``secagg`` with 4 sites
  under distributed DP (each site adds integer noise inside the sum, :mod:`fedshield.crypto.ddg`).

Rows marked ``control`` are also run with the sites holding other images, for the
victim-absent control and the verdict (:mod:`.reference`).

Membership inference (:mod:`.membership`) on the final model of a short training through
:func:`~fedshield.engine.experiment.build_federation`, plain against DP.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from torch import nn

from fedshield.attacks.inversion import InversionConfig, ObservedUpdate, invert
from fedshield.attacks.membership import attack_aucs, per_example_loss, train_reference
from fedshield.attacks.observe import observe_round
from fedshield.attacks.scores import match, unrelated_level
from fedshield.attacks.unrolled import LocalWork, invert_unrolled
from fedshield.data.sites import SiteData
from fedshield.engine.federation import Federation
from fedshield.engine.models import SmallCNN, build_model
from fedshield.engine.site import make_site
from fedshield.engine.trainer import Algorithm
from fedshield.errors import ConfigError
from fedshield.privacy import DPConfig

__all__ = ["PRESETS", "BenchPreset", "RoundSpec", "inversion_rounds", "membership_run", "run_round"]


@dataclass(frozen=True)
class BenchPreset:
    """One size of the benchmark: data, model, attack budget and training length."""

    name: str
    dataset: str  # breastmnist or synthetic
    model: str  # a MODELS name, or "tiny" (SmallCNN of width 4)
    b1_images: int  # plain FedSGD batch-1 sites (one image each), all attacked
    attack: InversionConfig
    mi_rounds: int
    mi_epochs: int
    mi_sites: int = 4
    dp_noise: float = 1.0  # DP rounds' noise multiplier (clip 1)
    control_draws: int = 3  # victim-absent control rounds per controlled row (.reference)

    def model_factory(self) -> Callable[[], nn.Module]:
        """A fresh network of this preset's architecture."""
        if self.model == "tiny":
            return lambda: SmallCNN(1, 2, width=4)
        return lambda: build_model(self.model)


PRESETS = {
    "full": BenchPreset("full", "breastmnist", "cnn", 6, InversionConfig(steps=2000), 10, 3),
    "quick": BenchPreset(
        "quick", "breastmnist", "cnn", 2, InversionConfig(steps=1000, restarts=3), 5, 2
    ),
    "tiny": BenchPreset(
        "tiny", "synthetic", "tiny", 1, InversionConfig(steps=60, restarts=1), 1, 1, mi_sites=2,
        control_draws=2,
    ),
}  # fmt: skip


@dataclass(frozen=True)
class RoundSpec:
    """One attacked round: the protection, the local work, and the attacks on what the
    server saw (``target``: a site's own update, or ``None`` for the aggregate)."""

    name: str
    protect: str
    algorithm: str
    sites: int
    per_site: int  # images per site (its batch: FedSGD uses the full local set)
    local_epochs: int = 1
    dp: str | None = None  # a DPConfig mode: local (each site noises) or distributed (in the sum)
    attacks: tuple[tuple[str, int | None, int, int, bool], ...] = ()
    # each: (label, target site or None, images to reconstruct, groups, labels known)
    unrolled: bool = False  # simulate the sites' local steps (.unrolled), not one gradient
    budget: tuple[tuple[str, float], ...] = ()  # this row's InversionConfig overrides
    control: bool = False  # also attack victim-absent rounds (.reference)


def inversion_rounds(preset: BenchPreset) -> list[RoundSpec]:
    """The grid of attacked rounds."""
    n = preset.b1_images
    b1 = tuple((f"plain-fedsgd-b1-site{i}", i, 1, 1, False) for i in range(n))
    return [
        RoundSpec("plain fedsgd b1", "plain", "fedsgd", n, 1, attacks=b1, control=True),
        RoundSpec("plain fedsgd b4", "plain", "fedsgd", 1, 4,
                  attacks=(("plain-fedsgd-b4", 0, 4, 1, True),)),
        RoundSpec("plain fedavg b1 x5 steps", "plain", "fedavg", 1, 1, local_epochs=5,
                  attacks=(("plain-fedavg-b1-5steps", 0, 1, 1, False),)),
        RoundSpec("plain fedavg b1 x5 steps, unrolled", "plain", "fedavg", 1, 1, local_epochs=5,
                  unrolled=True, attacks=(("plain-fedavg-b1-5steps-unrolled", 0, 1, 1, False),)),
        RoundSpec("secagg fedsgd 4 sites b1", "secagg", "fedsgd", 4, 1, attacks=(
            ("secagg-sum4-as-1-image", None, 1, 1, False),
            ("secagg-sum4-as-4-sites", None, 4, 4, True),
        ), control=True),
        RoundSpec("secagg fedsgd 10 sites b1", "secagg", "fedsgd", 10, 1, attacks=(
            ("secagg-sum10-as-1-image", None, 1, 1, False),
        ), control=True),
        RoundSpec("he threshold fedsgd 4 sites b1", "he-threshold", "fedsgd", 4, 1, attacks=(
            ("he-threshold-sum4-as-1-image", None, 1, 1, False),
        ), control=True),
        RoundSpec("plain fedsgd b1 local DP", "plain", "fedsgd", 1, 1, dp="local",
                  attacks=(("plain-fedsgd-b1-local-dp", 0, 1, 1, False),)),
        RoundSpec("secagg fedsgd 4 sites b1 distributed DP", "secagg", "fedsgd", 4, 1,
                  dp="distributed", control=True,
                  attacks=(("secagg-sum4-distributed-dp-as-1-image", None, 1, 1, False),)),
    ]  # fmt: skip


def load_images(preset: BenchPreset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(train images, train labels, unrelated pool)``: the sites' images come from the train
    split, the unrelated reference images from the test split."""
    if preset.dataset == "synthetic":
        from fedshield.data.synthetic import synthetic_images

        x, y = synthetic_images(64, seed=0)
        pool, _ = synthetic_images(32, seed=1)
        return x, y, pool
    if preset.dataset != "breastmnist":
        raise ConfigError(f"unknown benchmark dataset {preset.dataset!r}")
    from fedshield.data import breastmnist_path, load_medmnist

    splits = load_medmnist(breastmnist_path())
    return (*splits["train"], splits["test"][0])


def run_round(
    spec: RoundSpec, preset: BenchPreset, images: np.ndarray, labels: np.ndarray,
    pool: np.ndarray, *, chosen: np.ndarray | None = None,
) -> list[dict]:  # fmt: skip
    """Train one real round of ``spec``, then run each of its attacks, scored against the
    victims (the first ``sites x per_site`` training images). ``chosen``: the training
    images the sites hold instead (a victim-absent control, :mod:`.reference`)."""
    victims = np.arange(spec.sites * spec.per_site)
    chosen = victims if chosen is None else np.asarray(chosen, np.int64)
    if chosen.shape != victims.shape:
        raise ConfigError(f"chosen must hold {len(victims)} image indices, got {chosen.shape}")
    sites = [
        make_site(SiteData(f"site{s}", images[part], labels[part], images[:0], labels[:0]))
        for s, part in enumerate(np.split(chosen, spec.sites))
    ]
    privacy = None
    if spec.dp:
        privacy = DPConfig(mode=spec.dp, clip=1.0, noise_multiplier=preset.dp_noise,
                           delta=1e-5, rounds=1, sites=spec.sites)  # fmt: skip
    fed = Federation(
        model_factory=preset.model_factory(), sites=sites, algorithm=Algorithm(spec.algorithm),
        protect=_protection(spec), local_epochs=spec.local_epochs, seed=0, privacy=privacy,
    )  # fmt: skip
    steps = spec.local_epochs if spec.algorithm != "fedsgd" else 1
    view = observe_round(fed, image_shape=tuple(images.shape[1:]), local_steps=steps)
    rows = []
    for label, target, count, groups, known in spec.attacks:
        seen = view.aggregate if target is None else view.per_site[target]
        given = labels[_part(chosen, spec.sites, target)] if known else None
        config = replace(preset.attack, groups=groups, **dict(spec.budget))
        truth = images[_part(victims, spec.sites, target)]
        site = fed.sites[target or 0]
        work = (LocalWork(fed.trainers[target or 0], fed.algorithm,
                          batch_size=site.train.batch_size) if spec.unrolled else None)  # fmt: skip
        rows.append(_attack(label, spec, seen, truth, given, count, config, pool, work))
        if privacy is not None:
            rows[-1]["privacy"] = privacy.describe(1)
    return rows


def _part(indices: np.ndarray, sites: int, target: int | None) -> np.ndarray:
    """The images of site ``target`` (``None``: every site's) among ``indices``."""
    return indices if target is None else np.split(indices, sites)[target]


def _protection(spec: RoundSpec):
    """``spec.protect`` for the Federation: ``he-threshold`` is ``he`` with threshold keys
    (n-of-n), made through the real key-setup sessions when the Federation is built."""
    if spec.protect != "he-threshold":
        return spec.protect
    from fedshield.protocols.registry import get_protocol

    return get_protocol("he", he_keys="threshold", max_weight=float(spec.per_site),
                        sites=spec.sites)  # fmt: skip


_SEES = {"secagg": "the sum only",
         "he-threshold": "ciphertexts (nothing to invert), then the sum it decrypts"}  # fmt: skip


def _attack(label, spec, seen: ObservedUpdate, truth, known_labels, count, config, pool,
            work: LocalWork | None = None) -> dict:  # fmt: skip
    if work is None:
        reconstruction = invert(seen, count=count, labels=known_labels, config=config)
    else:  # simulates the site's local steps
        reconstruction = invert_unrolled(seen, work, count=count, labels=known_labels,
                                         config=config)  # fmt: skip
    pairs = match(reconstruction.images, truth)
    return {
        "scenario": label,
        "protect": spec.protect,
        "algorithm": spec.algorithm,
        "sites": spec.sites,
        "batch": spec.per_site,
        "local_epochs": spec.local_epochs,
        "server_sees": _SEES.get(spec.protect, "one site's update"),
        "images": count,
        "labels": "known" if known_labels is not None else "inferred (iDLG)",
        "pairs": pairs,
        "psnr_mean": float(np.mean([p["psnr"] for p in pairs])),
        "ssim_mean": float(np.mean([p["ssim"] for p in pairs])),
        "unrelated": unrelated_level(truth, pool),
        "attack_loss": reconstruction.loss,
        "restart_losses": reconstruction.losses,
        "seconds": reconstruction.seconds,
        "config": asdict(config),
        "_images": (truth, reconstruction.images, pairs),  # for the PNG, not the JSON
    }


def membership_run(preset: BenchPreset, *, dp: bool, protect: str = "plain") -> dict:
    """Train a short federation (``fedshield run``'s engine), then attack its final model:
    members are the sites' training images, non-members half of the held-out test images;
    the calibration's reference model trains on the other half."""
    from fedshield.engine.experiment import RunConfig, build_federation

    dp_options = {"dp_mode": "central", "dp_noise": preset.dp_noise} if dp else {}
    config = RunConfig(
        dataset=preset.dataset, sites=preset.mi_sites, rounds=preset.mi_rounds,
        local_epochs=preset.mi_epochs, protect=protect, model="cnn", seed=0, **dp_options,
    )  # fmt: skip
    start = time.perf_counter()
    torch.manual_seed(0)
    fed = build_federation(config)
    for _ in range(config.rounds):
        record = fed.run_round()
    model = fed.runtimes[0].load(fed.global_vector)
    members = [s.train.dataset.tensors for s in fed.sites]
    held = [s.test.dataset.tensors for s in fed.sites if s.test is not None]
    mx, my = (torch.cat(t).numpy() for t in zip(*members, strict=True))
    hx, hy = (torch.cat(t).numpy() for t in zip(*held, strict=True))
    order = np.random.default_rng(0).permutation(len(hx))
    out_idx, ref_idx = order[: len(order) // 2], order[len(order) // 2 :]
    reference = train_reference(build_model("cnn"), hx[ref_idx], hy[ref_idx],
                                epochs=config.rounds * config.local_epochs)  # fmt: skip
    aucs = attack_aucs(
        per_example_loss(model, mx, my), per_example_loss(model, hx[out_idx], hy[out_idx]),
        per_example_loss(reference, mx, my),
        per_example_loss(reference, hx[out_idx], hy[out_idx]),
    )  # fmt: skip
    return {
        "protect": protect, "dp": "central site-level" if dp else None,
        "rounds": config.rounds, "local_epochs": config.local_epochs, "sites": config.sites,
        "members": len(mx), "non_members": len(out_idx), "reference_train": len(ref_idx),
        "auc_loss_threshold": aucs["loss_threshold"], "auc_calibrated": aucs["calibrated"],
        "model_test_auc": record.metrics["auc"], "epsilon": (record.privacy or {}).get("epsilon"),
        "noise_multiplier": preset.dp_noise if dp else None,
        "seconds": time.perf_counter() - start,
    }  # fmt: skip
