"""Bad arguments to the engine's public classes fail at once, typed as pyca does (TypeError for
a wrong type, ValueError for a wrong value), with a message naming the argument."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from fedshield.aggregation import build as build_server_opt
from fedshield.cli import main
from fedshield.engine import Algorithm, Federation, LocalTrainer, Site, make_site
from fedshield.engine.models import SmallCNN
from fedshield.errors import ConfigError
from fedshield.protocols import get_protocol


def _sites(tiny_sites):
    return [make_site(s, batch_size=8, seed=i) for i, s in enumerate(tiny_sites)]


def _trained_nothing(monkeypatch):
    """Fail the test if any site trains: a bad argument must be caught before training."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("a site trained before the bad argument was reported")

    monkeypatch.setattr(LocalTrainer, "local_update", refuse)


def test_a_model_instance_instead_of_a_factory_is_named(tiny_sites):
    with pytest.raises(TypeError, match=r"model_factory.*class"):
        Federation(model_factory=SmallCNN(width=4), sites=_sites(tiny_sites))


def test_an_algorithm_given_as_a_string_says_what_to_pass(tiny_sites):
    with pytest.raises(
        TypeError, match=r"algorithm must be an Algorithm, e\.g\. Algorithm\('fedprox'\)"
    ):
        Federation(
            model_factory=lambda: SmallCNN(width=4), sites=_sites(tiny_sites), algorithm="fedprox"
        )


def test_a_server_optimizer_given_as_a_string_fails_before_any_site_trains(tiny_sites, monkeypatch):
    _trained_nothing(monkeypatch)
    with pytest.raises(TypeError, match=r"server_opt.*build"):
        Federation(
            model_factory=lambda: SmallCNN(width=4), sites=_sites(tiny_sites), server_opt="adam"
        )
    assert build_server_opt("adam") is not None  # the way the message points to


@pytest.mark.parametrize("weight", [0.0, -3.0, float("nan"), float("inf")])
def test_a_site_with_a_bad_weight_is_named(weight):
    loader = DataLoader(TensorDataset(torch.zeros(2, 1), torch.zeros(2)))
    with pytest.raises(ValueError, match="site 'hospital-b': weight must be positive"):
        Site("hospital-b", loader, None, weight)


def test_a_site_with_arrays_instead_of_loaders_is_named():
    with pytest.raises(TypeError, match="site 'a': train must be a torch DataLoader"):
        Site("a", np.zeros((2, 1)), None, 2.0)


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"local_epochs": 0}, ValueError, "local_epochs"),
        ({"local_epochs": 1.5}, TypeError, "local_epochs"),
        ({"seed": -1}, ValueError, "seed"),
        ({"trainer": "adam"}, TypeError, "trainer"),
        ({"dropout": 0.1}, TypeError, "dropout"),
        ({"sites": []}, ValueError, "sites"),
        ({"protect": 3}, TypeError, "protect"),
    ],
)
def test_federation_arguments_are_checked(tiny_sites, kwargs, error, name):
    arguments = {"model_factory": lambda: SmallCNN(width=4), "sites": _sites(tiny_sites)}
    with pytest.raises(error, match=name):
        Federation(**{**arguments, **kwargs})


def test_secagg_without_max_weight_refuses_rather_than_unweighting_fedavg():
    with pytest.raises(TypeError, match="max_weight"):
        get_protocol("secagg")
    with pytest.raises(TypeError, match="max_weight"):
        get_protocol("he")
    assert get_protocol("plain").name == "plain"  # plain sends weights as they are


def test_an_algorithm_with_an_unknown_name_lists_the_choices():
    with pytest.raises(ConfigError, match="fedavg"):
        Algorithm("fedproxx")


def test_too_many_sites_for_the_data_is_a_clear_cli_error(tmp_path, capsys):
    code = main(["run", "--dataset", "breastmnist", "--sites", "200", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    if "breastmnist.npz" in out and "not found" in out.lower():  # pragma: no cover
        pytest.skip("breastmnist.npz not available")
    assert code == 2 and "use at most 156 sites" in out


def test_one_site_under_secure_aggregation_says_it_hides_nothing(tmp_path, capsys):
    code = main(["run", "--sites", "1", "--rounds", "1", "--local-epochs", "1",
                 "--out", str(tmp_path)])  # fmt: skip
    assert code == 0
    assert "that site's own update: nothing is hidden" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [({"mu": "0.1"}, TypeError, "mu"), ({"mu": -1.0}, ValueError, "mu"),
     ({"sgd_lr": 0.0}, ValueError, "sgd_lr"), ({"sgd_lr": float("nan")}, ValueError, "sgd_lr")],
)  # fmt: skip
def test_algorithm_knobs_are_checked(kwargs, error, name):
    with pytest.raises(error, match=name):
        Algorithm("fedprox", **kwargs)


@pytest.mark.parametrize("name", ["loss_fn", "optimizer_factory", "train_fn"])
def test_local_trainer_callables_are_checked(name):
    with pytest.raises(TypeError, match=name):
        LocalTrainer(**{name: "adam"})
