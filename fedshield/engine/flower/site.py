"""One site's long-lived process in a Flower deployment.

It builds the same federation the in-process engine would (same options, same seeds) and
serves its own site's part of every round: train on the received model and open the protocol
session, answer each stage, report test predictions. Started by :mod:`.deploy` next to the
site's SuperNode; in a real deployment each hospital runs it next to its own SuperNode.

    python -m fedshield.engine.flower.site --config run.json --site 0 --port 7000 --key-file K
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from fedshield import wire
from fedshield.engine.experiment import RunConfig, build_federation
from fedshield.engine.flower.relay import serve
from fedshield.protocols.he.keys import HEKeySetupClient
from fedshield.protocols.registry import MODEL_BROADCAST

__all__ = ["SiteProcess", "main"]


class SiteProcess:
    """Site ``site``'s state across rounds and its answers to the server's requests."""

    def __init__(self, config: RunConfig, site: int) -> None:
        self.site = site
        # Under he the sites hold the model: each applies the decrypted aggregate itself, and
        # the key comes through the grid (the key-holder site makes it), not from a local setup.
        self.he = config.protect == "he"
        self.federation = build_federation(config, prepare_protocol=not self.he)
        self.session = None
        self.key_session: HEKeySetupClient | None = None

    def handle(self, kind: str, payload: bytes) -> bytes | None:
        """One request from the server (through Flower and the relay)."""
        fed = self.federation
        if kind == "hello":
            return str(self.site).encode()
        if kind == "keysetup":
            self.key_setup = fed.protocol.key_setup(
                clients=list(range(len(fed.sites))), dim=fed.encoder.protocol_dim
            )
            self.key_session = self.key_setup.client(self.site)
            return b""
        if kind.startswith("keystage:"):
            if self.key_session is None:
                raise RuntimeError("no key setup in progress")
            stage = kind.removeprefix("keystage:")
            reply = self.key_session.handle(stage, payload)
            if stage == "install":
                fed.protocol = self.key_setup.bind({self.site: self.key_session.keyring})
                self.key_session = None
            return reply
        if kind == "train":
            self._close_previous()
            header = wire.parse(payload).header
            fed.round = header.round
            if self.he:  # train from this site's own copy of the model
                payload = fed.model_broadcast()
            start = time.perf_counter()
            self.session = fed.site_session(self.site, payload)
            return np.array([time.perf_counter() - start]).tobytes()
        if kind.startswith("stage:"):
            if self.session is None:
                raise RuntimeError("no open session: the server skipped the train message")
            return self.session.handle(kind.removeprefix("stage:"), payload)
        if kind == "evaluate":
            message = wire.parse(payload)
            message.expect(protocol=MODEL_BROADCAST, stage=0, round=message.header.round,
                           sender=wire.SERVER_ID)  # fmt: skip
            self._close_previous()
            if self.he:
                vector = fed.global_vector
            else:
                vector = message.array(0, dtype="<f4", shape=(fed.spec.dim,))
                fed.global_vector = vector
            labels, probs, loss = fed.site_predictions(self.site, vector)
            header = wire.Header(MODEL_BROADCAST, 1, message.header.round, self.site)
            return wire.serialize(
                header,
                [labels.astype(np.float64), probs.astype(np.float64), np.array([loss])],
            )
        if kind == "shutdown":
            return None
        raise ValueError(f"unknown request {kind!r}")

    def _close_previous(self) -> None:
        """Error feedback for the last session, once its protocol is over."""
        if self.session is not None:
            self.federation.site_sent(self.site, self.session.sent)
            if self.he and self.session.aggregate is not None:
                self.federation.apply_aggregate(*self.session.aggregate)
            self.session = None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="RunConfig as JSON")
    parser.add_argument("--site", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key-file", type=Path, required=True)
    args = parser.parse_args(argv)
    config = RunConfig(**json.loads(args.config.read_text()))
    torch.set_num_threads(config.threads or 1)  # float sums depend on it; one core per site
    process = SiteProcess(config, args.site)
    serve(("127.0.0.1", args.port), args.key_file.read_bytes(), process.handle)


if __name__ == "__main__":
    main()
