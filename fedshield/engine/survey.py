"""The experimental study of Guan et al., "Federated Learning for Medical Image Analysis: A
Survey", Pattern Recognition 2024: two sites with acquisition shift, six strategies.

- Single: train at a site, test at the same site.
- Cross: train at one site, test at the other.
- Mix: train on the pooled data (centralised), test at each site.
- FedSGD, FedAvg, FedProx: federated over the two sites, test at each site.

Every strategy gets the same budget of optimizer steps per site: ``rounds × local_epochs``
passes over the data in mini-batches; FedSGD gets as many rounds, each one full-batch gradient
step, as FedAvg takes local steps. Metrics are averaged over the two test sites and the seeds
(mean ± std).

The default model is the small CNN with GroupNorm: with BatchNorm, running statistics averaged
over sites with different scanners miscalibrate the shared model (the problem FedBN solves),
and with 100 images per site the BatchNorm train/eval gap makes single-site accuracy erratic.
Pass ``model="cnn"`` to see the BatchNorm behaviour.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader

from fedshield.data import load_sites
from fedshield.engine.federation import Federation
from fedshield.engine.metrics import classification_metrics, predict
from fedshield.engine.models import build_model
from fedshield.engine.site import make_site
from fedshield.engine.trainer import Algorithm, LocalTrainer

__all__ = ["METRICS", "STRATEGIES", "SurveyConfig", "run_survey", "summarise"]

STRATEGIES = ("Single", "Cross", "Mix", "FedSGD", "FedAvg", "FedProx")
METRICS = ("accuracy", "auc", "sensitivity", "specificity")


@dataclass
class SurveyConfig:
    """Options of ``fedshield experiment survey``."""

    dataset: str = "synthetic"
    seeds: int = 3
    rounds: int = 10
    local_epochs: int = 2
    train_per_site: int = 100
    mu: float = 0.01
    fedsgd_lr: float = 0.2
    lr: float = 2e-3
    batch_size: int = 16
    model: str = "cnn-gn"


def run_survey(
    config: SurveyConfig, on_step: Callable[[str], None] | None = None
) -> dict[str, list[dict]]:
    """Run every strategy for every seed; returns ``{strategy: [metrics per site and seed]}``."""
    results: dict[str, list[dict]] = {s: [] for s in STRATEGIES}
    epochs = config.rounds * config.local_epochs
    for seed in range(config.seeds):
        sites = [
            make_site(d, batch_size=config.batch_size, seed=seed * 10 + i)
            for i, d in enumerate(_two_sites(config, seed))
        ]
        trainer = LocalTrainer(optimizer_factory=lambda p: torch.optim.Adam(p, lr=config.lr))

        def fresh(seed: int = seed):
            torch.manual_seed(seed)
            return build_model(config.model)

        for i, site in enumerate(sites):  # Single and Cross share the site's model
            model = fresh()
            trainer.fit(model, site.train, epochs)
            results["Single"].append(_test(model, site, trainer))
            results["Cross"].append(_test(model, sites[1 - i], trainer))
        _step(on_step, f"seed {seed}: Single, Cross")

        pooled = ConcatDataset([s.train.dataset for s in sites])
        gen = torch.Generator().manual_seed(seed)
        model = fresh()
        trainer.fit(
            model,
            DataLoader(pooled, batch_size=config.batch_size, shuffle=True, generator=gen),
            epochs,
        )
        results["Mix"] += [_test(model, s, trainer) for s in sites]
        _step(on_step, f"seed {seed}: Mix")

        steps = max(len(s.train) for s in sites)  # mini-batches per local epoch
        federated = {
            "FedSGD": (Algorithm("fedsgd", sgd_lr=config.fedsgd_lr), epochs * steps, 1),
            "FedAvg": (Algorithm("fedavg"), config.rounds, config.local_epochs),
            "FedProx": (Algorithm("fedprox", mu=config.mu), config.rounds, config.local_epochs),
        }
        for name, (algorithm, rounds, local_epochs) in federated.items():
            fed = Federation(
                model_factory=lambda: build_model(config.model),
                sites=sites,
                algorithm=algorithm,
                trainer=trainer,
                local_epochs=local_epochs,
                seed=seed,
            )
            for _ in range(rounds):
                fed.run_round()
            _, per_site = fed.evaluate()
            results[name] += list(per_site.values())
            _step(on_step, f"seed {seed}: {name}")
    return results


def summarise(results: dict[str, list[dict]]) -> dict[str, dict[str, dict[str, float]]]:
    """``{strategy: {metric: {"mean", "std"}}}`` over sites and seeds."""
    return {
        strategy: {
            m: {
                "mean": float(np.nanmean([r[m] for r in rows])),
                "std": float(np.nanstd([r[m] for r in rows])),
            }
            for m in METRICS
        }
        for strategy, rows in results.items()
        if rows
    }


def _two_sites(config: SurveyConfig, seed: int):
    if config.dataset == "synthetic":
        from fedshield.data import make_synthetic_sites

        return make_synthetic_sites(2, train_per_site=config.train_per_site, seed=seed)
    return load_sites(config.dataset, 2, shift=True, seed=seed)


def _test(model, site, trainer) -> dict:
    y, p, loss = predict(model, site.test, trainer.loss_fn)
    return classification_metrics(y, p, loss)


def _step(on_step, text: str) -> None:
    if on_step:
        on_step(text)
