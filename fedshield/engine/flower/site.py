"""One site's long-lived process in a Flower deployment.

It builds only its own :class:`~fedshield.engine.site.SiteRuntime` (its own data, the same
options and seeds as every other process) and serves its part of every round: train on the
received model and open the protocol session, answer each stage, report its evaluation
(a summary of counts and its own metrics, never an example's label or prediction).
Started by :mod:`.deploy` next to the site's SuperNode; in a real deployment each hospital runs
it next to its own SuperNode.

    python -m fedshield.engine.flower.site --config run.json --site 0 --port 7000 --key-file K \
        --roster roster.json --identity site0.identity [--data site0.yaml]

(``fedshield site`` starts it with its SuperNode; see :mod:`fedshield.deploy`.)
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from fedshield import wire
from fedshield.crypto.identity import Identity
from fedshield.engine.evaluation import SiteEvaluation
from fedshield.engine.experiment import RunConfig, build_global_model, build_site_runtime
from fedshield.engine.flower.relay import serve
from fedshield.engine.global_model import GlobalModel
from fedshield.engine.secure_eval import count_spec, counts_client
from fedshield.engine.site import SiteRuntime
from fedshield.errors import ConfigError, WrongRound
from fedshield.protocols.base import ClientSession
from fedshield.protocols.registry import MODEL_BROADCAST, KeySetup
from fedshield.protocols.roster import Roster

__all__ = ["SiteProcess", "main"]


class SiteProcess:
    """Site ``site``'s state across rounds and its answers to the server's requests."""

    def __init__(self, config: RunConfig, site: int, roster: Roster, identity: Identity) -> None:
        self.site = site
        self.runtime = build_site_runtime(config, site)
        _check_public_facts(config, self.runtime)
        protocol = self.runtime.protocol
        roster.check_parameters(protocol.pinned_parameters())
        roster.check_identity(site, identity.public_bytes)
        self.runtime.protocol, self.runtime.identity = protocol.with_roster(roster), identity
        # Under he the sites hold the model: each applies the decrypted aggregate itself, and
        # the key comes through the grid (the key-holder site makes it), not from a local setup.
        self.held: GlobalModel | None = None
        if config.protect == "he":
            self.held = build_global_model(
                config, self.runtime.model, adaptive_ranges=self.runtime.protocol.adaptive
            )
        self.sites = list(range(config.sites))
        self.session: ClientSession | None = None
        self.round = 0
        self.applied = 0  # under he: the last round whose aggregate this site applied
        self.key_setup: KeySetup | None = None
        self.key_session: ClientSession | None = None
        self.count_session: ClientSession | None = None  # the evaluation's (under secagg)
        self.evaluated = 0  # the last round this site evaluated (each round once)

    def handle(self, kind: str, payload: bytes) -> bytes | None:
        """One request from the server (through Flower and the relay)."""
        if kind == "hello":
            return json.dumps({"id": self.site, "name": self.runtime.site.name}).encode()
        if kind == "keysetup" or kind.startswith("keystage:"):
            return self._key_setup(kind, payload)
        if kind == "train":
            return self._train(payload)
        if kind.startswith("stage:"):
            if self.session is None:
                raise RuntimeError("no open session: the server skipped the train message")
            return self.session.handle(kind.removeprefix("stage:"), payload)
        if kind == "evaluate":
            return self._evaluate(payload)
        if kind.startswith("evalstage:"):
            if self.count_session is None:
                raise RuntimeError("no open count session: the server skipped the evaluation")
            return self.count_session.handle(kind.removeprefix("evalstage:"), payload)
        if kind == "shutdown":
            return None
        raise ValueError(f"unknown request {kind!r}")

    def _key_setup(self, kind: str, payload: bytes) -> bytes:
        if kind == "keysetup":
            dim = self.runtime.compressor.protocol_dim
            self.key_setup = self.runtime.protocol.key_setup(
                clients=self.sites, dim=dim, tensors=len(self.runtime.spec.sizes)
            )
            self.key_session = self.key_setup.client(self.site, self.runtime.identity)
            return b""
        if self.key_session is None:
            raise RuntimeError("no key setup in progress")
        stage = kind.removeprefix("keystage:")
        reply = self.key_session.handle(stage, payload)
        if stage == self.key_session.stages[-1]:  # installed (shared or threshold keys)
            self.runtime.use_protocol(self.key_setup.bind({self.site: self.key_session.keyring}))
            self.key_session = None
        return reply

    def _train(self, payload: bytes) -> bytes:
        header = wire.parse(payload).header
        if header.protocol != MODEL_BROADCAST or header.stage != 0 or header.round <= self.round:
            # refused before anything changes: a late duplicate (a hung site's, woken up)
            # must not close the session of the round in progress
            raise WrongRound(f"a train request for round {header.round} after {self.round}")
        self._close_previous()
        self.round = header.round
        if self.held is not None:
            self._check_not_stale(wire.parse(payload))
        start = time.perf_counter()
        if self.held is not None:  # train from this site's own copy of the model
            self.session = self.runtime.train_from(
                self.held.vector, self.round, self.held.range_exponents
            )
        else:
            self.session = self.runtime.train(payload, self.round)
        return np.array([time.perf_counter() - start]).tobytes()

    def _check_not_stale(self, broadcast: wire.Message) -> None:
        """Under ``he``: refuse to train when this site missed an aggregate the others
        applied. Its model (and its quantization ranges) would be stale, and its update,
        encoded on other ranges, would corrupt the sum."""
        (last,) = broadcast.array(0, dtype="<u4", shape=(1,)).tolist()
        if last != self.applied:
            raise WrongRound(
                f"site {self.site} holds the model after round {self.applied}'s aggregate, the "
                f"federation's is after round {last}: it missed an aggregate, so it sits out "
                "(rejoining needs the current model: restart the run)"
            )

    def _evaluate(self, payload: bytes) -> bytes:
        message = wire.parse(payload)
        round = message.header.round
        if round < self.round:  # a site that missed this round's training still evaluates
            raise WrongRound(f"an evaluation of round {round} after round {self.round}")
        if round <= self.evaluated:  # a second count session over one summary: refused
            raise WrongRound(
                f"round {round} asked for an evaluation, but this site already evaluated round "
                f"{self.evaluated}: a second count session over the same counts would let the "
                "server subtract two sums"
            )
        message.expect(protocol=MODEL_BROADCAST, stage=0, round=round, sender=wire.SERVER_ID)
        self.evaluated = round
        self._close_previous()
        if self.held is not None:
            vector = self.held.vector
        else:
            vector = message.array(0, dtype="<f4", shape=(self.runtime.spec.dim,))
        self.count_session = None
        evaluation = self.runtime.evaluate(vector)
        if evaluation is None:
            return b""  # no test set at this site
        header = wire.Header(MODEL_BROADCAST, 1, round, self.site)
        digest = bytes.fromhex(self.held.sha256()) if self.held is not None else b""
        spent = self.runtime.trainer.privacy_spent()  # DP-SGD: what this site has spent
        # Aggregates only: the summary (empty where the site has only its own metrics, or
        # sends its counts masked in a count session, flagged in the last field) and its own
        # scalar metrics; never an example's label or prediction.
        own_only = isinstance(evaluation, dict)
        counted = self._open_count_session(evaluation, round)
        empty = own_only or counted or evaluation.summary.n == 0
        summary = np.zeros(0) if empty else evaluation.summary.to_vector()
        metrics = json.dumps(evaluation).encode() if own_only else evaluation.metrics_bytes()
        fields = [summary, metrics, digest, json.dumps(spent).encode() if spent else b"",
                  b"\x01" if counted else b""]  # fmt: skip
        return wire.serialize(header, fields)

    def _open_count_session(self, evaluation, round: int) -> bool:
        """Under ``secagg``: open this site's count session for its summary (it answers the
        ``evalstage:`` requests next); whether one was opened. A test set too large for the
        count ring is refused here, before anything is sent (``ConfigError``)."""
        spec = count_spec(self.runtime.protocol)
        if spec is None or not isinstance(evaluation, SiteEvaluation):
            return False
        self.count_session = counts_client(spec, site_id=self.site, round=round,
                                           summary=evaluation.summary,
                                           identity=self.runtime.identity)  # fmt: skip
        return True

    def close(self) -> None:
        """Drop this process's secret material: the identity key, the protocol's keys (its
        ``he`` secret key), the open session and any key setup. Nothing answers after it."""
        self.session = self.key_session = self.key_setup = self.held = None
        self.count_session = None
        del self.runtime  # holds the identity key and the protocol's keys

    def _close_previous(self) -> None:
        """Error feedback for the last session, once its protocol is over; under ``he``, the
        decrypted aggregate applied to this site's own model."""
        if self.session is None:
            return
        self.runtime.conclude(self.session)
        if self.held is not None and self.session.aggregate is not None:
            weighted_sum, total = self.session.aggregate
            if self.runtime.privacy is not None:  # DP-FedAvg's fixed denominator, as in process
                weighted_sum, total = self.runtime.privacy.at_server(weighted_sum)
            self.held.apply_aggregate(
                weighted_sum, total, self.round, range_counts=self.session.range_counts
            )
            self.applied = self.round
        self.session = None


def _check_public_facts(config: RunConfig, runtime: SiteRuntime) -> None:
    """Refuse this site's data where it contradicts the run's public parameters, from which
    the server built its model and every site its protocol: more training examples than
    ``max_weight`` (the FedAvg weight would be silently capped), or other image channels
    than ``in_channels`` (another model)."""
    site = runtime.site
    fix = "the same in the run's options at the server and every site"
    if config.dp_mode is None and site.weight > config.max_weight:
        raise ConfigError(
            f"site {runtime.site_id} ({site.name}) has {site.weight:g} training examples, more "
            f"than the run's max_weight {config.max_weight:g} (its weight would be capped): "
            f"raise max_weight to at least {site.weight:g}, {fix}, and enrol again (the "
            "roster pins max_weight)"
        )
    data = site.train.dataset if site.train is not None else None
    if isinstance(data, TensorDataset) and config.in_channels is not None:
        channels = int(data.tensors[0].shape[1])
        if channels != config.in_channels:
            raise ConfigError(
                f"site {runtime.site_id} ({site.name}) prepares images with {channels} "
                f"channel(s), the run's in_channels is {config.in_channels}: set channels: "
                f"{config.in_channels} in this site's data spec, or in_channels, {fix}"
            )


def main(argv: list[str] | None = None) -> None:
    """Serve one site until the server's ``shutdown`` or a SIGTERM (also one that arrives
    while it loads its data); either ends it with exit status 0, its listening socket
    closed and its references to the keys dropped (nothing is zeroed)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="RunConfig as JSON")
    parser.add_argument("--site", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key-file", type=Path, required=True)
    parser.add_argument("--roster", type=Path, required=True, help="the federation's roster")
    parser.add_argument("--identity", type=Path, required=True, help="this site's identity key")
    parser.add_argument("--data", type=Path, default=None, help="this site's own data spec")
    args = parser.parse_args(argv)
    config = RunConfig(**json.loads(args.config.read_text()))
    if args.data is not None:
        config = _with_own_data(config, args.site, args.data)
    torch.set_num_threads(config.threads or 1)  # float sums depend on it; one core per site
    stop = threading.Event()  # SIGTERM (a supervisor, `LocalDeployment.stop`): stop serving
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
    # the identity key is referenced only by the process, which close() drops
    process = SiteProcess(config, args.site, Roster.load(args.roster), Identity.load(args.identity))
    serve(("127.0.0.1", args.port), args.key_file.read_bytes(), process.handle, stop=stop)
    process.close()


def _with_own_data(config: RunConfig, site: int, data: Path) -> RunConfig:
    """``config`` reading site ``site``'s data from its own spec ``data`` (docs/data.md)
    alone: the other sites' entries are placeholders this process never opens."""
    specs = [f"<site {i}'s own data, not at this site>" for i in range(config.sites)]
    specs[site] = str(data)
    return RunConfig(**{**config.as_dict(), "site_data": specs})


if __name__ == "__main__":
    main()
