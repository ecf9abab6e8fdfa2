"""``fedshield audit``: the honest package passes; broken protocol variants defined here (masks
that do not cancel, a server that keeps a key, a parser that takes a truncated message, a
session that raises an untyped error) make it fail, through the audit's own ``variants``."""

import argparse
import io
import json

import numpy as np
import pytest
from rich.console import Console

from fedshield import wire
from fedshield.audit import AuditBed, fuzz, reachable_secrets, run_checks, select
from fedshield.audit.cli import run_command
from fedshield.audit.mutate import MUTATIONS, length_fields, mutate
from fedshield.cli import main
from fedshield.errors import ConfigError, MalformedMessage
from fedshield.protocols.base import receives
from fedshield.protocols.he import HEKeyring, HEServer
from fedshield.protocols.plain import PlainServer
from fedshield.protocols.secagg import SecAggClient


class NonCancellingClient(SecAggClient):
    """Forgets its pairwise mask with its first neighbour: the masks no longer cancel."""

    def _masked_vector(self, peers):
        return super()._masked_vector(peers[1:])


class KeyKeepingServer(HEServer):
    """Keeps a keyring "for debugging", deep in a container."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.debug = {"keys": [HEKeyring.generate(self.plan)]}


class LenientServer(PlainServer):
    """Takes what its parser refuses as framing trouble: a truncated message passes."""

    def receive(self, stage, sender, data):
        try:
            super().receive(stage, sender, data)
        except MalformedMessage:
            self.alive.add(sender)


class FragileServer(PlainServer):
    """Reads the message length unchecked: an odd length raises an untyped ValueError."""

    def receive(self, stage, sender, data):
        if len(data) % 2:
            raise ValueError("odd length")
        super().receive(stage, sender, data)


class EagerServer(PlainServer):
    """Adds an update to its sum before its checks, and takes it back only if it passes: a
    rejected update leaves its trace in the sum."""

    @receives("input")
    def _receive_input(self, stage, sender, message):
        weight = float(message.array(0, dtype="<f8", shape=(1,))[0])
        values = message.array(1, dtype="<f4", shape=(self.dim,)).astype(np.float64)
        self._sum += weight * values
        super()._receive_input(stage, sender, message)
        self._sum -= weight * values


def _run(patterns, variants=None):
    bed = AuditBed(variants=variants)
    return {r.name: r for r in run_checks(bed, select(patterns), quick=True)}


def _args(tmp_path, only, fuzz=0):
    return argparse.Namespace(quick=True, fuzz=fuzz, seed=0, only=only, out=tmp_path)


def test_the_honest_package_passes_a_tiny_audit():
    results = _run(["exact/*", "reject/plain/*", "reject/secagg/truncated", "no-key/he-shared"])
    assert len(results) == 10 + 5 + 1 + 1  # every mode exact (4 count sessions), plain 5 kinds
    failed = {name: r.detail for name, r in results.items() if not r.passed}
    assert not failed, failed
    assert "exact" in results["reject/secagg/truncated"].detail


def test_masks_that_do_not_cancel_fail_the_audit_and_its_exit_status(tmp_path):
    bed = AuditBed(variants={"secagg.client": NonCancellingClient})
    status = run_command(_args(tmp_path, ["exact/secagg"]), Console(file=io.StringIO()), bed=bed)
    document = json.loads((tmp_path / "audit.json").read_text())
    assert status == 1 and not document["passed"]
    assert document["failed"] == ["exact/secagg"]
    assert "5 sites" in document["checks"][0]["detail"]


def test_a_server_that_keeps_a_key_fails_the_no_key_audit():
    result = _run(["no-key/he-shared"], {"he-shared.server": KeyKeepingServer})["no-key/he-shared"]
    assert not result.passed
    assert "server.debug['keys'][0] (HEKeyring)" in result.detail


def test_a_parser_that_accepts_a_truncated_message_fails_the_audit():
    results = _run(["reject/plain/*"], {"plain.server": LenientServer})
    assert not results["reject/plain/truncated"].passed
    assert "accepted" in results["reject/plain/truncated"].detail
    assert results["reject/plain/replayed"].passed  # the rest of its checks still hold


def test_the_fuzzer_counts_a_crash_when_a_session_raises_an_untyped_error():
    report = fuzz(28, bed=AuditBed(variants={"plain.server": FragileServer}), modes=["plain"])
    assert report.total.mutations == 28
    assert report.total.crashes > 0 and not report.passed
    assert any("ValueError: odd length" in e["error"] for e in report.crash_examples)
    assert report.by_target["plain.client/input"].crashes == 0  # the clients are the real ones


def test_the_fuzzer_counts_a_rejected_message_that_left_a_trace_in_the_sum():
    report = fuzz(56, bed=AuditBed(variants={"plain.server": EagerServer}), modes=["plain"])
    assert report.total.corrupted > 0 and not report.passed
    assert report.total.crashes == 0 and report.honest_after == {"plain": "exact"}
    assert report.by_mutation["non-finite"].corrupted > 0


def test_the_honest_package_survives_the_fuzzer_and_its_schedule_is_seeded():
    modes = ["plain", "secagg", "he-shared-keys"]  # a round, and he's key distribution
    first = fuzz(42, seed=5, modes=modes)
    again = fuzz(42, seed=5, modes=modes)
    assert first.passed, first.as_dict()
    assert first.total.rejected > 0 and first.total.completed > 0
    assert first.total.corrupted == 0 and first.by_target["plain.server/input"].mutations == 7
    assert set(first.by_target) == set(again.by_target)
    assert {k: v.mutations for k, v in first.by_target.items()} == {
        k: v.mutations for k, v in again.by_target.items()
    }
    assert first.honest_after == dict.fromkeys(modes, "exact")


def test_mutations_change_the_message_where_they_say():
    header = wire.Header(protocol=1, stage=1, round=7, sender=3)
    message = wire.serialize(header, [np.array([2.0]), np.ones(5, np.float32), b"key"])
    assert length_fields(message)[0] == 16  # the header's body length, then each field's
    assert len(length_fields(message)) == 4
    rng = np.random.default_rng(0)
    for name in MUTATIONS:
        assert mutate(name, message, rng) != message, name
    poisoned = wire.parse(mutate("non-finite", message, rng))
    assert any(not np.isfinite(f).all() for f in poisoned.fields if isinstance(f, np.ndarray))
    for _ in range(20):  # a lie changes bytes of one length field only, never the size
        lie = mutate("length-lie", message, rng)
        changed = [i for i in range(len(message)) if lie[i] != message[i]]
        assert len(lie) == len(message)
        assert any(all(o <= i < o + 4 for i in changed) for o in length_fields(message))


def test_the_key_walk_follows_closures_and_finds_a_site_key():
    plan = AuditBed().spec("he-shared", 3).plan
    keyring = HEKeyring.generate(plan)

    class Holder:
        def __init__(self):
            self.callback = lambda: keyring

    found, walked = reachable_secrets(Holder(), name="h")
    assert found == ["h.callback.__closure__[0] (HEKeyring)"] and walked >= 2
    assert reachable_secrets({"plan": plan}, name="d")[0] == []


def test_the_command_writes_machine_readable_json(tmp_path, capsys):
    status = main(["audit", "--quick", "--only", "exact/plain", "--only", "uniform/secagg",
                   "--out", str(tmp_path)])  # fmt: skip
    document = json.loads((tmp_path / "audit.json").read_text())
    assert status == 0 and document["passed"] and document["fuzz"] is None
    assert [c["name"] for c in document["checks"]] == ["exact/plain", "uniform/secagg"]
    assert "PASS" in capsys.readouterr().out


def test_bad_options_are_refused_with_what_to_change(capsys):
    assert main(["audit", "--only", "no/such/*"]) == 2
    assert "no audit check matches" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="--fuzz"):
        fuzz(-1)
