"""``fedshield audit`` over the count sessions of secure evaluation (``*-counts``): the honest
sessions pass, and broken count-session variants defined here (a server that reveals a sum
beyond the counts' bound, count masks that do not cancel, a site that goes silent on a sum off
the grid, a server that records one report) make it fail, with exit status 1."""

import argparse
import io
import json

import numpy as np
from rich.console import Console

from fedshield.audit import SESSION_TYPES, AuditBed, fuzz, run_checks, select
from fedshield.audit.cli import run_command
from fedshield.errors import ProtocolAbort
from fedshield.protocols.counts import CountGrid
from fedshield.protocols.he import HEClient, HEServer
from fedshield.protocols.secagg import SecAggClient, SecAggServer


class UncheckedCountGrid(CountGrid):
    """Decodes a count sum without checking it against ``count * max_count``."""

    def decode_checked(self, values, count, *, config, dim, ranges=None):
        return np.asarray(values[:dim]).astype(np.int64), count, None


class BoundlessCountServer(SecAggServer):
    """Takes any unmasked count sum: a count beyond the public bound passes."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.grid = UncheckedCountGrid(self.config.counts)


class NonCancellingCountClient(SecAggClient):
    """Forgets its pairwise mask with its first neighbour: the count masks no longer cancel."""

    def _masked_vector(self, peers):
        return super()._masked_vector(peers[1:])


class SilentCountClient(HEClient):
    """Goes silent on a count sum off the grid (raises) instead of sending its refusal."""

    def _take_aggregate(self, stage, message):
        answer = super()._take_aggregate(stage, message)
        if self.aggregate is None:
            raise ProtocolAbort("the decrypted count sum is off the grid")
        return answer


class UnboundedReportServer(HEServer):
    """Records the agreed report without checking it against the count grid's bound."""

    def _check_receipts(self, stage):
        self.reported = self.reports.agreed(self.round, self.alive, contributors=2**40)


class FirstReportServer(HEServer):
    """Records the first site's report of the count sum, never comparing the others'."""

    def _check_receipts(self, stage):
        self.reported = self.reports.sums[min(self.reports.sums)]


def _run(patterns, variants=None):
    bed = AuditBed(variants=variants)
    return {r.name: r for r in run_checks(bed, select(patterns), quick=True)}


def test_the_count_sessions_are_audited_and_the_honest_ones_pass():
    assert {"secagg-counts.server", "he-threshold-t-counts.client"} <= set(SESSION_TYPES)
    results = _run(["exact/*-counts", "dropout/*-counts", "bounds/*", "report/*",
                    "no-key/he-shared-counts", "reject/secagg-counts/*",
                    "reject/he-threshold-t-counts/truncated"])  # fmt: skip
    assert len(results) == 4 + 3 + 1 + 4 + 3 * 2 + 1 + 6 + 1
    failed = {name: r.detail for name, r in results.items() if not r.passed}
    assert not failed, failed
    assert "exactly over sites [0, 2, 3, 4]" in results["reject/secagg-counts/truncated"].detail
    assert "exactly over sites [0, 2]" in results["reject/he-threshold-t-counts/truncated"].detail
    assert "nothing revealed" in results["bounds/he-threshold-counts"].detail
    assert "refused the decrypted count sum" in results["bounds/he-shared-counts"].detail
    for mode in ("secagg-counts", "he-shared-counts", "he-threshold-t-counts"):
        detail = results[f"dropout/{mode}"].detail  # both outcomes sampled
        assert " 0 exact" not in detail and " 0 aborted" not in detail, detail


def test_a_count_server_that_reveals_a_sum_beyond_the_bound_fails_the_audit(tmp_path):
    bed = AuditBed(variants={"secagg-counts.server": BoundlessCountServer})
    args = argparse.Namespace(quick=True, fuzz=0, seed=0, only=["bounds/secagg-counts",
                              "exact/secagg-counts"], out=tmp_path)  # fmt: skip
    status = run_command(args, Console(file=io.StringIO()), bed=bed)
    document = json.loads((tmp_path / "audit.json").read_text())
    assert status == 1 and document["failed"] == ["bounds/secagg-counts"]
    detail = document["checks"][1]["detail"]
    assert "revealed a sum (327676 at that entry)" in detail  # 5 * 65535 + 1


def test_count_masks_that_do_not_cancel_fail_the_audit():
    results = _run(["exact/secagg-counts", "dropout/secagg-counts"],
                   {"secagg-counts.client": NonCancellingCountClient})  # fmt: skip
    assert not results["exact/secagg-counts"].passed
    assert not results["dropout/secagg-counts"].passed


def test_a_site_that_goes_silent_on_a_sum_off_the_grid_fails_the_bounds_audit():
    # the count session before the refusal receipt and the server's own bound: the liar's
    # report is the only one left, and the server records whatever it claims
    results = _run(["bounds/he-shared-counts", "exact/he-shared-counts"],
                   {"he-shared-counts.client": SilentCountClient,
                    "he-shared-counts.server": UnboundedReportServer})  # fmt: skip
    assert results["exact/he-shared-counts"].passed
    assert not results["bounds/he-shared-counts"].passed
    assert "revealed a sum (196606 at that entry)" in results["bounds/he-shared-counts"].detail


def test_the_servers_own_bound_is_needed_when_the_refusing_sites_go_silent():
    # the refusal receipt alone: the honest sites that would refuse may die at the last stage
    unbounded = _run(
        ["bounds/he-shared-counts"], {"he-shared-counts.server": UnboundedReportServer}
    )
    check = unbounded["bounds/he-shared-counts"]
    assert not check.passed and "the others silent at the last stage" in check.detail
    # the server's bound alone (sites that go silent instead of refusing): still nothing revealed
    silent = _run(["bounds/he-shared-counts"], {"he-shared-counts.client": SilentCountClient})
    assert silent["bounds/he-shared-counts"].passed, silent["bounds/he-shared-counts"].detail


def test_a_server_that_records_one_report_fails_the_report_audit():
    results = _run(["report/he-shared-counts/*"], {"he-shared-counts.server": FirstReportServer})
    assert not results["report/he-shared-counts/different"].passed
    assert results["report/he-shared-counts/negative"].passed


def test_the_fuzzer_mutates_messages_into_every_count_session():
    modes = ["secagg-counts", "he-shared-counts", "he-threshold-t-counts"]
    report = fuzz(42, seed=3, modes=modes)
    assert report.passed, report.as_dict()
    sessions = {key.split("/")[0] for key in report.by_target}
    assert sessions == {f"{m}.{side}" for m in modes for side in ("server", "client")}
    assert report.total.mutations == 42 and report.total.rejected > 0
    assert report.honest_after == dict.fromkeys(modes, "exact")
