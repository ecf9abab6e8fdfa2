"""A deployment's site process on its own data folder alone (issue 19): it trains and answers
every request of a secagg round, never opens another site's folder, and the round's model is
the one ``fedshield run --site-data`` computes in process with both folders."""

from __future__ import annotations

import shutil

import torch
from image_folders import opened_paths, png_site, write_spec
from in_process import in_process

from fedshield.crypto.identity import Identity
from fedshield.engine.experiment import (
    RunConfig,
    build_server_round,
    enrol_sites,
    with_data_facts,
)
from fedshield.engine.flower.apps import _site_result
from fedshield.engine.flower.site import SiteProcess, _with_own_data
from fedshield.engine.transport import Reply, Transport
from fedshield.protocols.roster import Roster

LABELS = [0, 1] * 6  # 12 images a site: 9 to train, 3 to test


class _Stages(Transport):
    """The protocol's stages answered by the site processes' own ``handle``, as the Flower
    relay hands them over (``stage:<name>``)."""

    def __init__(self, processes: dict[int, SiteProcess]) -> None:
        self.processes = processes

    def exchange(self, stage, messages):
        return {c: Reply(self.processes[c].handle(f"stage:{stage}", m))
                for c, m in messages.items()}  # fmt: skip


def test_a_site_process_on_its_own_folder_trains_answers_and_never_opens_another(tmp_path):
    specs = []
    for name in ("a", "b"):
        png_site(tmp_path / name, LABELS)
        spec = write_spec(tmp_path / f"{name}.yaml", root=name, test_fraction=0.25,
                          size=[28, 28], classes=["benign", "malignant"])  # fmt: skip
        specs.append(str(spec))
    config = with_data_facts(RunConfig(site_data=specs, sites=2, protect="secagg", rounds=1,
                                       local_epochs=1, threads=1))  # fmt: skip
    assert config.class_names == ["benign", "malignant"]
    expected = in_process(config)[0]["model_sha256"]  # both folders, one process
    roster = Roster.load(enrol_sites(config, tmp_path / "enrolment"))
    # What each host receives: the run's public options, no site's data path.
    public = RunConfig(**{**config.as_dict(), "site_data": None, "transport": "flower"})

    def site(i: int) -> SiteProcess:
        identity = Identity.load(tmp_path / "enrolment" / f"site{i}.identity")
        return SiteProcess(_with_own_data(public, i, specs[i]), i, roster, identity)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a site process (float sums depend on it)
    try:
        other = site(1)
        shutil.rmtree(tmp_path / "b")  # site 1's folder is gone: site 0 must not need it
        with opened_paths() as opened:
            processes = {0: site(0), 1: other}
            server = build_server_round(public)
            server.use_protocol(server.protocol.with_roster(roster))
            broadcast = server.broadcast()
            for process in processes.values():
                assert process.handle("train", broadcast)  # its training time
            outcome, _ = server.drive(_Stages(processes), [0, 1])
            server.apply(outcome)
            evaluation = processes[0].handle("evaluate", server.broadcast())
    finally:
        torch.set_num_threads(threads)
    assert outcome.revealed is not None and outcome.revealed.contributors == (0, 1)
    assert server.model.sha256() == expected
    *_, masked = _site_result(evaluation, 0, server.round, 2, secure=True)
    assert masked  # its counts go to the count session, never in the clear
    assert any(path.startswith(str(tmp_path / "a")) for path in opened)  # the hook sees reads
    assert not [path for path in opened if path.startswith(str(tmp_path / "b"))]
