"""``fedshield roster enrol`` and ``fedshield roster check``: a deployment's enrolment, and
every way a roster or identity file can be wrong (exit status 2, a message naming the fix)."""

from __future__ import annotations

import hashlib
import json
import stat

import pytest

from fedshield.cli import main
from fedshield.crypto.identity import Identity, fingerprint
from fedshield.engine.experiment import RunConfig
from fedshield.protocols.roster import Roster

FAST = ["--max-weight", "100"]  # no data to read


def _enrol(out, *options: str) -> int:
    return main(["roster", "enrol", "--out", str(out), *options])


@pytest.fixture
def enrolled(tmp_path, capsys):
    """Three secagg sites enrolled in ``tmp_path / "enrol"``."""
    out = tmp_path / "enrol"
    assert _enrol(out, "--sites", "3", "--protect", "secagg", "--quant-bits", "10", *FAST) == 0
    return out


def _error(capsys) -> str:
    return " ".join(capsys.readouterr().out.split())  # rich wraps long lines


def test_enrol_then_check_round_trips(enrolled, capsys):
    out = capsys.readouterr().out
    roster = Roster.load(enrolled / "roster.json")
    assert roster.sites == (0, 1, 2) and roster.min_sites >= 2
    assert roster.parameters["protection"] == "secagg"
    assert roster.parameters["quant_bits"] == 10 and roster.parameters["max_weight"] == 100.0
    for site in roster.sites:
        path = enrolled / f"site{site}.identity"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert Identity.load(path).public_bytes == roster.key(site)
        assert fingerprint(roster.key(site)) in out
    assert roster.digest.hex() in out and "secret" in out
    for site in roster.sites:
        identity = str(enrolled / f"site{site}.identity")
        args = ["roster", "check", str(enrolled / "roster.json"), "--identity", identity]
        assert main([*args, "--site", str(site)]) == 0
        checked = _error(capsys)
        assert f"is site {site}'s identity key" in checked
        assert roster.digest.hex() in checked and "min_sites" in checked


def test_fingerprint_is_the_head_of_the_keys_sha256():
    key = Identity.generate().public_bytes
    assert fingerprint(key) == hashlib.sha256(key).hexdigest()[:16]


def test_enrol_reads_the_largest_sites_weight_from_the_data(tmp_path):
    assert _enrol(tmp_path, "--sites", "2", "--protect", "plain") == 0
    roster = Roster.load(tmp_path / "roster.json")
    assert roster.parameters["protection"] == "plain" and roster.min_sites == 1


def test_enrol_from_a_run_config(tmp_path, capsys):
    config = RunConfig(protect="he", sites=2, max_weight=50.0)
    (tmp_path / "run.json").write_text(json.dumps(config.as_dict()))
    assert _enrol(tmp_path / "enrol", "--config", str(tmp_path / "run.json")) == 0
    roster = Roster.load(tmp_path / "enrol" / "roster.json")
    assert roster.parameters["protection"] == "he" and roster.parameters["max_weight"] == 50.0
    assert _enrol(tmp_path / "other", "--config", str(tmp_path / "run.json"), "--sites", "3") == 2
    assert "--config takes every option" in _error(capsys) and not (tmp_path / "other").exists()


def test_enrol_needs_sites(tmp_path, capsys):
    assert _enrol(tmp_path, *FAST) == 2
    assert "--sites" in _error(capsys)


def test_enrol_refuses_to_overwrite(enrolled, capsys):
    before = {p.name: p.read_bytes() for p in enrolled.iterdir()}
    capsys.readouterr()
    assert _enrol(enrolled, "--sites", "3", *FAST) == 2
    message = _error(capsys)
    assert "already holds roster.json, site0.identity" in message and "empty directory" in message
    assert {p.name: p.read_bytes() for p in enrolled.iterdir()} == before


def test_enrol_refuses_a_folder_with_another_enrolments_key(tmp_path, capsys):
    Identity.generate().save(tmp_path / "site7.identity")
    assert _enrol(tmp_path, "--sites", "2", *FAST) == 2
    assert "site7.identity" in _error(capsys)
    assert not (tmp_path / "roster.json").exists()


def _check(roster, identity=None, site=None) -> int:
    args = ["roster", "check", str(roster)]
    args += [] if identity is None else ["--identity", str(identity)]
    return main(args + ([] if site is None else ["--site", str(site)]))


def test_check_refuses_another_sites_identity(enrolled, capsys):
    capsys.readouterr()
    assert _check(enrolled / "roster.json", enrolled / "site1.identity", 0) == 2
    assert "is site 1's identity key, not site 0's" in _error(capsys)


def test_check_refuses_another_enrolments_identity(enrolled, tmp_path, capsys):
    Identity.generate().save(tmp_path / "stranger.identity")
    capsys.readouterr()
    assert _check(enrolled / "roster.json", tmp_path / "stranger.identity", 0) == 2
    assert "not the identity key of any site on this roster" in _error(capsys)


def test_check_refuses_a_site_off_the_roster_and_a_half_request(enrolled, capsys):
    assert _check(enrolled / "roster.json", enrolled / "site0.identity", 5) == 2
    assert "site 5 is not on" in _error(capsys)
    assert _check(enrolled / "roster.json", enrolled / "site0.identity") == 2
    assert "--identity FILE and --site I together" in _error(capsys)


def test_check_refuses_a_file_that_is_not_an_identity_key(enrolled, capsys):
    (enrolled / "bad.identity").write_bytes(b"x" * 31)
    capsys.readouterr()
    assert _check(enrolled / "roster.json", enrolled / "bad.identity", 0) == 2
    assert "is not a fedshield identity key (31 bytes" in _error(capsys)


def _tamper(path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _replace(old: str, new: str):
    return lambda path: path.write_text(path.read_text().replace(old, new, 1))


TAMPERED = {  # what is done to the file, and what the message must say
    "bad-json": (lambda p: p.write_text("{not json"), "not a valid fedshield roster"),
    "not-text": (lambda p: p.write_bytes(b"\xff\xfe"), "not UTF-8"),
    "format": (
        lambda p: _tamper(p, lambda d: d.update(format="fedshield-roster/0")),
        "format is 'fedshield-roster/0'",
    ),
    "min-sites": (lambda p: _tamper(p, lambda d: d.update(min_sites=9)), "min_sites"),
    "dup-key": (
        lambda p: _tamper(p, lambda d: d["members"].update({"1": d["members"]["0"]})),
        "share an identity key",
    ),
    "short-key": (lambda p: _tamper(p, lambda d: d["members"].update({"0": "ab"})), "32 bytes"),
    "no-members": (lambda p: _tamper(p, lambda d: d.pop("members")), "members"),
    "dup-json-key": (
        _replace('"members":{', '"members":{"2":"' + "00" * 32 + '",'),
        "repeated keys ['2']",
    ),
    "id-spelling": (_replace('"0":', '"00":'), "plain number"),
}


@pytest.mark.parametrize(("tamper", "expected"), TAMPERED.values(), ids=TAMPERED.keys())
def test_check_refuses_a_tampered_roster(enrolled, capsys, tamper, expected):
    tamper(enrolled / "roster.json")
    capsys.readouterr()
    assert _check(enrolled / "roster.json") == 2
    message = _error(capsys)
    assert expected in message, message
    assert "roster.json" in message and "enrol again" in message  # where, and what to do


def test_check_of_a_missing_roster(tmp_path, capsys):
    assert _check(tmp_path / "nowhere.json") == 2
    assert "cannot read the roster" in _error(capsys)
