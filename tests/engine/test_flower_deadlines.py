"""The per-phase deadlines of a Flower run: validated, and the same through every door."""

import math

import pytest

from fedshield.engine.flower.deadlines import PHASES, Deadlines
from fedshield.errors import ConfigError


def test_defaults_are_short_and_round_trip_through_the_run_config():
    d = Deadlines()
    assert (d.train, d.stage, d.evaluate) == (120.0, 30.0, 60.0)
    config = d.as_run_config()
    assert set(config) == {f"{p}-timeout" for p in PHASES}
    assert Deadlines.from_mapping(config) == d
    changed = Deadlines(train=300, shutdown=2.5)
    assert Deadlines.from_mapping(changed.as_run_config()) == changed
    assert Deadlines.parse(changed.describe()) == changed


def test_a_mapping_or_the_command_line_sets_some_phases_and_keeps_the_rest():
    d = Deadlines.from_mapping({"train": 90, "stage-timeout": 12})
    assert (d.train, d.stage, d.evaluate) == (90.0, 12.0, 60.0)
    assert Deadlines.parse(" train=7.5 , evaluate=20 ") == Deadlines(train=7.5, evaluate=20)
    assert Deadlines.parse("") == Deadlines()


@pytest.mark.parametrize("value", [0, -1, math.inf, math.nan, "30", True, None])
def test_a_deadline_that_is_not_positive_finite_seconds_is_refused(value):
    with pytest.raises(ConfigError, match="deadline 'stage'"):
        Deadlines(stage=value)


@pytest.mark.parametrize(
    ("mapping", "match"),
    [
        ({"training": 5}, "unknown deadline 'training'"),
        ({"train": 5, "train-timeout": 6}, "'train' is given twice"),
        ({"evaluate": -2}, "deadline 'evaluate'"),
    ],
)
def test_a_bad_mapping_names_what_to_fix(mapping, match):
    with pytest.raises(ConfigError, match=match):
        Deadlines.from_mapping(mapping)


@pytest.mark.parametrize(
    ("text", "match"),
    [("train", "write phase=seconds"), ("train=soon", "write phase=seconds"),
     ("stage=1,stage=2", "given twice"), ("warmup=3", "unknown deadline")],
)  # fmt: skip
def test_a_bad_command_line_names_what_to_fix(text, match):
    with pytest.raises(ConfigError, match=match):
        Deadlines.parse(text)


@pytest.mark.parametrize(
    ("args", "match"),
    [(["--transport", "flower", "--deadline", "train=0"], "deadline 'train': 0.0 s"),
     (["--deadline", "train=30"], "--deadline applies to --transport flower only")],
)  # fmt: skip
def test_the_command_line_refuses_a_bad_deadline_before_any_work(args, match, capsys, tmp_path):
    from fedshield.cli import main

    assert main(["run", *args, "--out", str(tmp_path / "out")]) == 2
    assert match in capsys.readouterr().out
    assert not (tmp_path / "out").exists()
