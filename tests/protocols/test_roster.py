"""The federation's roster: every validation branch, its file format, and the digest binding
that makes a signature under one roster worthless under another."""

from __future__ import annotations

import json
from types import MappingProxyType

import pytest

from fedshield.crypto.identity import Identity
from fedshield.errors import BadSignature, ConfigError, UnknownSender
from fedshield.protocols.roster import Roster

IDS = {site: Identity.generate() for site in range(3)}
KEYS = {site: identity.public_bytes for site, identity in IDS.items()}
LABEL, MESSAGE = b"test/round-keys", b"round 1: keys"


def _roster(**changes) -> Roster:
    options = {"members": KEYS, "min_sites": 2, "parameters": {"protection": "secagg"}}
    return Roster(**{**options, **changes})


def test_a_roster_keeps_sorted_members_and_is_immutable():
    members = {2: KEYS[2], 0: KEYS[0], 1: KEYS[1]}
    roster = Roster(members, 3, {"quant_bits": 8})
    assert roster.sites == (0, 1, 2) and roster.key(1) == KEYS[1]
    members[0] = KEYS[2]  # the caller's dict changing later changes nothing
    assert roster.key(0) == KEYS[0]
    assert isinstance(roster.members, MappingProxyType)
    with pytest.raises(TypeError):
        roster.members[0] = KEYS[1]  # type: ignore[index]
    with pytest.raises(TypeError):
        roster.parameters["quant_bits"] = 16  # type: ignore[index]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"members": {0: KEYS[0], 1: KEYS[0]}}, "share an identity key"),
        ({"members": {}}, "at least one"),
        ({"members": {-1: KEYS[0], 0: KEYS[1]}}, "must be in"),
        ({"members": {0: KEYS[0][:31], 1: KEYS[1]}}, "32 bytes"),
        ({"members": {0: KEYS[0].hex(), 1: KEYS[1]}}, "32 bytes"),
        ({"min_sites": 0}, "min_sites must be in 1..3"),
        ({"min_sites": 4}, "min_sites must be in 1..3"),
        ({"parameters": {"clip": object()}}, "JSON values"),
        ({"parameters": {"clip": float("nan")}}, "JSON values"),
        ({"parameters": {1: "a", "1": "b"}}, "JSON values"),
    ],
)
def test_invalid_rosters_are_refused(changes, message):
    with pytest.raises(ConfigError, match=message):
        _roster(**changes)


@pytest.mark.parametrize(
    ("changes", "error"),
    [({"members": [KEYS[0]]}, TypeError), ({"min_sites": True}, TypeError),
     ({"min_sites": 2.0}, TypeError), ({"members": {True: KEYS[0]}}, TypeError)],
)  # fmt: skip
def test_wrong_types_are_refused(changes, error):
    with pytest.raises(error):
        _roster(**changes)


def test_min_sites_may_be_every_member():
    assert _roster(min_sites=3).min_sites == 3


def test_json_round_trip_and_a_stable_digest(tmp_path):
    roster = _roster(parameters={"protection": "secagg", "clip": "adaptive", "bits": 8})
    again = Roster.from_json(roster.to_json())
    assert again == roster and again.digest == roster.digest
    assert len(roster.digest) == 32
    roster.save(tmp_path / "roster.json")
    assert Roster.load(tmp_path / "roster.json").digest == roster.digest
    # canonical: the same roster built in another order serializes to the same bytes
    reordered = Roster(dict(reversed(list(KEYS.items()))), 2, {"bits": 8, "clip": "adaptive",
                                                               "protection": "secagg"})  # fmt: skip
    assert reordered.to_json() == roster.to_json()


@pytest.mark.parametrize(
    "changes",
    [{"min_sites": 3}, {"parameters": {"protection": "he"}}, {"members": {**KEYS, 3: b"\x01" * 32}},
     {"members": {**KEYS, 2: Identity.generate().public_bytes}}],
)  # fmt: skip
def test_any_change_changes_the_digest(changes):
    assert _roster(**changes).digest != _roster().digest


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "Expecting value"),
        ("not json", "Expecting value"),
        ("[]", "'list' object has no attribute"),
        ("null", "no attribute"),
        ("{}", "format is None"),
        ('{"format": "fedshield-roster/2", "members": {}, "min_sites": 1}', "format is"),
        ('{"format": "fedshield-roster/1", "min_sites": 1}', "members"),
        ('{"format": "fedshield-roster/1", "members": {"0": "zz"}, "min_sites": 1}', "hex"),
        ('{"format": "fedshield-roster/1", "members": {"x": "00"}, "min_sites": 1}', "plain"),
        ('{"format": "fedshield-roster/1", "members": [], "min_sites": 1}', "items"),
    ],
)
def test_from_json_refuses_garbage_naming_its_source(text, message):
    with pytest.raises(ConfigError, match=r"site7\.roster is not a valid fedshield roster") as info:
        Roster.from_json(text, source="site7.roster")
    assert message in str(info.value)


def test_from_json_refuses_invalid_contents_with_the_constructors_reason():
    data = json.loads(_roster().to_json())
    data["members"]["1"] = data["members"]["0"]
    with pytest.raises(ConfigError, match="share an identity key"):
        Roster.from_json(json.dumps(data))
    data = json.loads(_roster().to_json())
    data["min_sites"] = "2"
    with pytest.raises(ConfigError, match="min_sites must be an int"):
        Roster.from_json(json.dumps(data))


def test_load_of_a_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the roster"):
        Roster.load(tmp_path / "absent.json")


def test_a_signature_verifies_only_for_its_site_label_message_and_roster():
    roster = _roster()
    signature = roster.sign(IDS[0], LABEL, MESSAGE)
    roster.verify(0, signature, LABEL, MESSAGE)
    with pytest.raises(BadSignature, match="site 1"):
        roster.verify(1, signature, LABEL, MESSAGE)  # another site
    with pytest.raises(BadSignature):
        roster.verify(0, signature, b"test/survivors", MESSAGE)  # another purpose
    with pytest.raises(BadSignature):
        roster.verify(0, signature, LABEL, MESSAGE + b"!")
    with pytest.raises(BadSignature, match="64 bytes"):
        roster.verify(0, signature[:-1], LABEL, MESSAGE)
    with pytest.raises(UnknownSender, match="site 9"):
        roster.verify(9, signature, LABEL, MESSAGE)


@pytest.mark.parametrize("changes", [{"min_sites": 3}, {"parameters": {"protection": "plain"}}])
def test_a_signature_under_one_roster_does_not_verify_under_another(changes):
    """The same site, key, label and message: only the roster differs (its digest is signed),
    so a server cannot replay a site's signature into a federation it did not agree to."""
    signature = _roster().sign(IDS[0], LABEL, MESSAGE)
    other = _roster(**changes)
    assert other.key(0) == _roster().key(0)
    with pytest.raises(BadSignature):
        other.verify(0, signature, LABEL, MESSAGE)


def test_a_plain_identity_signature_is_not_a_roster_signature():
    with pytest.raises(BadSignature):
        _roster().verify(0, IDS[0].sign(LABEL, MESSAGE), LABEL, MESSAGE)


def test_key_of_a_non_member():
    with pytest.raises(UnknownSender, match="not on the federation's roster"):
        _roster().key(3)


def test_check_parameters_names_each_contradiction():
    roster = _roster(parameters={"protection": "secagg", "quant_bits": 8, "clip": "adaptive"})
    roster.check_parameters({"protection": "secagg", "quant_bits": 8, "clip": "adaptive"})
    roster.check_parameters({"protection": "secagg", "unpinned": 1})  # absent and extra: free
    with pytest.raises(ConfigError, match="quant_bits: roster 8, this site 10") as info:
        roster.check_parameters({"protection": "secagg", "quant_bits": 10, "clip": 0.1})
    assert "clip: roster 'adaptive', this site 0.1" in str(info.value)


def test_enrol_makes_fresh_distinct_identities_matching_the_roster():
    roster, identities = Roster.enrol([4, 2, 9], min_sites=2, parameters={"protection": "he"})
    assert roster.sites == (2, 4, 9) and set(identities) == {2, 4, 9}
    assert all(roster.key(s) == identities[s].public_bytes for s in roster.sites)
    again, _ = Roster.enrol([4, 2, 9], min_sites=2)
    assert set(again.members.values()).isdisjoint(roster.members.values())
    assert again.parameters == {}
    with pytest.raises(ConfigError):
        Roster.enrol([0, 1], min_sites=3)


def test_a_label_with_a_nul_byte_is_refused():
    """The label ends at the first NUL of what is signed: ("a\0b", m) and ("a", "b\0" + m)
    would otherwise be one signature."""
    roster, identities = Roster.enrol([0], min_sites=1)
    with pytest.raises(ValueError, match="NUL"):
        identities[0].sign(b"a\0b", b"m")
    with pytest.raises(ValueError, match="NUL"):
        roster.verify(0, bytes(64), b"a\0b", b"m")


def test_the_parser_refuses_repeated_keys_and_respelled_ids():
    roster, _ = Roster.enrol([0, 1], min_sites=1)
    text = roster.to_json()
    key = roster.members[1].hex()
    for tampered, why in (
        (text.replace('"members":{', f'"members":{{"1":"{key}",'), "repeated keys"),
        (text.replace('"1":', '"01":'), "plain number"),
    ):
        with pytest.raises(ConfigError, match=why):
            Roster.from_json(tampered)
