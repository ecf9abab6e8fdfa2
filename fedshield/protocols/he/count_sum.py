"""Evaluation counts summed under ``he``: an HE session over each site's integer count vector
(:mod:`fedshield.engine.secure_eval`), under the run's own keys.

**Exact.** The session's config is the run's with :attr:`HEConfig.counts
<fedshield.protocols.he.params.HEConfig.counts>` set: the values are packed on the exact
integer grid (:class:`~fedshield.protocols.counts.CountGrid`, every weight 1, no
quantization, no ranges), each count in a field of ``bits(max_count) + ceil(log2 n)`` bits, so
the sum of ``n`` sites' counts of at most ``max_count`` never carries into its neighbour
(:func:`~fedshield.protocols.he.params.plan_for`). A site checks its counts lie in
``[0, max_count]`` before it encrypts anything (``ConfigError``).

**The run's keys.** The plain modulus, degree and coefficient moduli of a plan depend only on
the number of sites and the kind of keys, never on the values' width, so the count plan has
the update plan's SEAL context and the run's secret key (shared keys) or key share and
collective public key (threshold keys) apply as they are. Encrypting another vector under the
same key is ordinary public-key (or symmetric) encryption with fresh randomness; no mask is
reused. Threshold decryption is the update path's: signed digests over the sum, flooded
partial decryptions by exactly ``t`` sites, once per round (the count session keeps its own
record per site, :meth:`ThresholdKeyring.for_plan
<fedshield.protocols.he.threshold_keyring.ThresholdKeyring.for_plan>`).

**Separation.** The count plan's ``params_id`` differs from the update plan's (its config has
``counts`` and its ``dim`` is the count vector's): every ciphertext message and every signed
digest names it, so a message of the update session is refused in a count session and the
reverse (``WrongShape``); the wire header's round refuses another round's message.

**Who learns the sum.** The server adds ciphertexts and never decrypts. Each site decrypts the
sum (shared keys: itself; threshold keys: from the ``t`` partials) and sends it back in its
receipt (:mod:`fedshield.protocols.he.reports`); the server reveals it only if every site that
accepted the sum sent the same one, so it learns the pooled counts, as under ``secagg``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from fedshield.errors import ConfigError
from fedshield.protocols.base import ClientSession, ServerSession
from fedshield.protocols.counts import CountGrid
from fedshield.protocols.he.client import HEClient
from fedshield.protocols.he.keys import HEKeyring
from fedshield.protocols.he.params import HEConfig, HEPlan, plan_for
from fedshield.protocols.he.server import HEServer
from fedshield.protocols.he.threshold import ThresholdClient, ThresholdServer
from fedshield.protocols.he.threshold_keyring import ThresholdKeyring
from fedshield.protocols.registry import HESpec, ProtocolSpec

__all__ = ["HECountSpec", "count_config"]


def count_config(config: HEConfig, max_count: int) -> HEConfig:
    """The run's HE config for a session summing counts of at most ``max_count``."""
    if config.scheme != "bfv":
        raise ConfigError("he: evaluation counts are summed exactly under BFV only, not CKKS")
    return replace(config, counts=max_count, weight_bits=0, noise=None, weighting="fraction")


@dataclass(frozen=True)
class HECountSpec(ProtocolSpec):
    """The count session of an ``he`` run whose key setup is done (``run``: its bound spec)."""

    name: ClassVar[str] = "he"
    stages: ClassVar[tuple[str, ...]] = HEServer.stages
    run: HESpec
    max_count: int

    def __post_init__(self) -> None:
        if self.run.plan is None:
            raise ConfigError("he: run the key setup before summing evaluation counts")
        CountGrid(self.max_count)

    @property
    def config(self) -> HEConfig:
        """The count session's config."""
        return count_config(self.run.config, self.max_count)

    def plan(self, dim: int) -> HEPlan:
        """The count plan for ``dim`` counts, on the run plan's SEAL context."""
        run = self.run.plan
        plan = plan_for(self.config, n_clients=run.n_clients, dim=dim)
        same = (plan.poly_degree, plan.coeff_bits, plan.plain_bits) == (
            run.poly_degree, run.coeff_bits, run.plain_bits)  # fmt: skip
        if not same:
            raise ConfigError("he: the count plan's parameters differ from the run's keys'")
        return plan

    def server(self, *, round: int, clients: list[int], dim: int) -> ServerSession:
        plan = self.plan(dim)
        if plan.config.keys == "threshold":
            return ThresholdServer(round=round, clients=clients, dim=dim, plan=plan,
                                   roster=self.run.roster)  # fmt: skip
        return HEServer(round=round, clients=clients, dim=dim, plan=plan)

    def client(
        self, *, client_id: int, update: np.ndarray, identity=None, **kwargs
    ) -> ClientSession:
        CountGrid(self.max_count).check(update)  # refused before anything is encrypted
        keyring = self.keyring(client_id, update.size)
        if keyring.plan.config.keys == "threshold":
            return ThresholdClient(client_id=client_id, keyring=keyring, roster=self.run.roster,
                                   identity=identity, update=update, **kwargs)  # fmt: skip
        return HEClient(client_id=client_id, keyring=keyring, update=update, **kwargs)

    def keyring(self, client_id: int, dim: int) -> HEKeyring | ThresholdKeyring:
        """Site ``client_id``'s run key (or key share) seen under the count plan for ``dim``
        counts: the same key, the count plan's encoding.

        Raises:
            ConfigError: the site holds no key in this process.
        """
        if client_id not in self.run.keyrings:
            raise ConfigError(f"he: site {client_id} holds no key in this process")
        keyring, plan = self.run.keyrings[client_id], self.plan(dim)
        if plan.config.keys == "threshold":
            return keyring.for_plan(plan)
        return HEKeyring(plan, keyring.secret_key, keyring.io)

    def describe(self) -> dict:
        return {**self.run.describe(), "counts": self.max_count}
