"""The Flower apps: ``server_app`` runs the server side of every round; ``client_app`` relays
each message to its site's process (:mod:`.site`) and sends the answer back.

Run configuration (``flwr run --run-config``): ``config`` (path of the RunConfig JSON),
``roster`` (path of the federation's roster),
``out`` (folder for ``rounds.json``), ``events`` (a file the server appends progress events
to) and the per-phase deadlines in seconds (``join-timeout``, ``keys-timeout``,
``train-timeout``, ``stage-timeout``, ``evaluate-timeout``, ``shutdown-timeout``: see
:mod:`.deadlines`; a missing one takes its default). SuperNode configuration
(``--node-config``): ``site-port`` and ``site-key-file`` of the site's process.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedshield.engine.flower.relay import RelayError, ask

__all__ = ["client_app", "server_app"]

client_app = ClientApp()
server_app = ServerApp()


@client_app.query("relay")
def relay(message: Message, context: Context) -> Message:
    """Hand the request to the site process; wrap its answer (or error) in the reply."""
    record = message.content["fedshield"]
    port = int(context.node_config["site-port"])
    key = Path(str(context.node_config["site-key-file"])).read_bytes()
    # The server's deadline for this request: a hung site process must not hold this ClientApp
    # (and its process) past it; a late answer would be refused anyway.
    timeout = float(record["timeout"]) if "timeout" in record else None
    try:
        data = ask(
            ("127.0.0.1", port), key, str(record["kind"]), bytes(record["data"]), timeout=timeout
        )
        reply = ConfigRecord({"ok": True, "data": data})
    except RelayError as exc:
        reply = ConfigRecord({"ok": False, "error": str(exc)})
    except TimeoutError:
        reply = ConfigRecord(
            {"ok": False, "error": f"the site process did not answer within {timeout:g} s"}
        )
    except OSError as exc:  # its process is gone (connection refused), or the link broke
        reply = ConfigRecord({"ok": False, "error": f"the site process is unreachable: {exc}"})
    return Message(RecordDict({"fedshield": reply}), reply_to=message)


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """All rounds: model out, training, the protocol's stages, evaluation; then the records.
    A failure is reported as a ``failed`` event (the launcher's error message) and re-raised."""
    cfg = context.run_config
    events = Path(str(cfg["events"]))

    def emit(**event) -> None:
        with events.open("a") as f:
            f.write(json.dumps(event) + "\n")

    try:
        _serve_rounds(grid, cfg, emit)
    except Exception as exc:
        emit(event="failed", error=f"{type(exc).__name__}: {exc}")
        raise


def _serve_rounds(grid: Grid, cfg, emit) -> None:
    """:func:`main`'s work: each phase waits for the sites until its deadline (from its start;
    a site that misses it is a dropout for that phase, its late answer never used)."""
    # Server-side imports here: the ClientApp relay, in the same module, stays light.
    from fedshield.engine.experiment import RunConfig, build_server_round
    from fedshield.engine.flower.deadlines import Deadlines
    from fedshield.engine.flower.transport import FlowerTransport
    from fedshield.engine.server_round import RoundTiming
    from fedshield.protocols.roster import Roster

    config = RunConfig(**json.loads(Path(str(cfg["config"])).read_text()))
    deadlines = Deadlines.from_mapping({k: v for k, v in cfg.items() if k.endswith("-timeout")})
    he = config.protect == "he"
    server = build_server_round(config)  # no site's data: only the config's public facts
    server.use_protocol(server.protocol.with_roster(Roster.load(str(cfg["roster"]))))
    nodes, names = _discover_sites(grid, config.sites, timeout=deadlines.join)
    emit(event="sites", nodes={str(c): n for c, n in nodes.items()})
    if he:
        _distribute_he_keys(server, grid, nodes, timeout=deadlines.keys)
        emit(event="keys")
    records = []
    for _ in range(config.rounds):
        r = server.round
        start = time.perf_counter()
        broadcast = _round_start(server, he)
        emit(round=r, stage="train")
        train_s = _train(grid, nodes, broadcast, r, deadlines.train)
        transport = FlowerTransport(
            grid, nodes, timeout=deadlines.stage, on_stage=lambda s, r=r: emit(round=r, stage=s)
        )
        outcome, session = server.drive(transport, sorted(train_s))
        aggregate_s = server.apply(outcome)
        *evaluation, digest, spent = _evaluate(
            server, grid, nodes, names, deadlines.evaluate, config
        )  # fmt: skip
        timing = RoundTiming(start, train_s, aggregate_s)
        record = server.record(
            outcome,
            session,
            evaluation=tuple(evaluation),
            broadcast_bytes=len(broadcast),
            timing=timing,
            model_sha256=digest,  # under he: the model the sites hold
        )
        record.privacy = spent or record.privacy  # DP-SGD: the sites' spending
        records.append(record.as_dict())
        emit(round=r, event="done", dropped=record.dropped, auc=record.metrics["auc"])
    out = Path(str(cfg["out"]))
    out.mkdir(parents=True, exist_ok=True)
    (out / "rounds.json").write_text(json.dumps(_plain(records)) + "\n")
    FlowerTransport(grid, nodes, timeout=deadlines.shutdown).request(
        "shutdown", dict.fromkeys(nodes, b"")
    )
    emit(event="finished")


def _train(grid: Grid, nodes: dict[int, int], broadcast: bytes, r: int, deadline: float):
    """Every site trains on the round's broadcast; the seconds of each that answered within
    ``deadline`` (the others are this round's dropouts)."""
    from fedshield.engine.flower.transport import FlowerTransport

    trained = FlowerTransport(grid, nodes, timeout=deadline).request(
        "train", dict.fromkeys(nodes, broadcast)
    )
    train_s = {c: reply.seconds for c, reply in sorted(trained.items()) if reply.data is not None}
    if not train_s:
        errors = {c: reply.error for c, reply in trained.items()}
        raise RuntimeError(
            f"round {r}: no site trained within the train deadline ({deadline:g} s): {errors}; "
            "a large model or a slow site needs a longer one ([deadlines] train in server.toml, "
            "--deadline train=SECONDS on the command line)"
        )
    return train_s


def _discover_sites(
    grid: Grid, n_sites: int, *, timeout: float
) -> tuple[dict[int, int], dict[int, str]]:
    """Which Flower node serves which site id, and each site's name: asks every connected
    node until ``n_sites`` sites have answered or ``timeout`` (from the start) has passed."""
    from fedshield.engine.flower.transport import FlowerTransport

    deadline = time.monotonic() + timeout
    nodes: dict[int, int] = {}
    names: dict[int, str] = {}
    asked: set[int] = set()
    while len(nodes) < n_sites and time.monotonic() < deadline:
        new = [n for n in grid.get_node_ids() if n not in asked]
        if not new:  # SuperNodes still connecting
            time.sleep(0.5)
            continue
        asked.update(new)
        left = max(0.1, deadline - time.monotonic())
        hello = FlowerTransport(grid, {n: n for n in new}, timeout=left)
        for node, reply in hello.request("hello", dict.fromkeys(new, b"")).items():
            if reply.data is not None:
                site = json.loads(reply.data.decode())
                nodes[int(site["id"])] = node
                names[int(site["id"])] = str(site["name"])
    if len(nodes) < n_sites:
        raise RuntimeError(
            f"only {len(nodes)} of {n_sites} sites answered within the {timeout:g} s join "
            f"deadline (sites {sorted(nodes)})"
        )
    return nodes, names


def _round_start(server, he: bool) -> bytes:
    """The model broadcast; under ``he`` the round number and the last round that produced an
    aggregate (the sites hold the model; one that missed an aggregate must not train)."""
    from fedshield.engine.global_model import he_round_start

    return he_round_start(server.round, server.last_aggregate_round) if he else server.broadcast()


def _distribute_he_keys(server, grid: Grid, nodes: dict[int, int], *, timeout: float) -> None:
    """The key-holder site makes the HE key and seals it to every other site whose signed
    transport key verifies against the roster; the server relays (and checks the signatures:
    the roster must be bound first). Its protocol is then bound to the parameters (no key)."""
    from fedshield.engine.flower.transport import FlowerTransport
    from fedshield.engine.runner import run_protocol

    sites = list(range(server.n_sites))
    setup = server.protocol.key_setup(
        clients=sites, dim=server.model.compressor.protocol_dim,
        tensors=len(server.model.spec.sizes),
    )  # fmt: skip
    FlowerTransport(grid, nodes, timeout=timeout).request("keysetup", dict.fromkeys(nodes, b""))
    transport = FlowerTransport(grid, nodes, timeout=timeout, prefix="keystage")
    outcome = run_protocol(setup.server(), transport)
    if outcome.revealed is None or len(outcome.revealed.contributors) != len(sites):
        raise RuntimeError(f"he key distribution failed: {outcome.aborted or outcome.stages}")
    server.use_protocol(setup.bind({}))


def _evaluate(server, grid: Grid, nodes: dict[int, int], names: dict[int, str], timeout, config):
    """Pooled and per-site metrics from every reachable site's evaluation summary and own
    metrics (no site sends an example's label or prediction), the model digest the sites
    agree on (under he), and each site's DP-SGD spending (if any). A site whose evaluation
    failed, or whose reply does not parse, is listed with the reason. The run's ``config``
    says its protection and its public number of classes, which sizes every summary."""
    from fedshield.engine.flower.transport import FlowerTransport
    from fedshield.engine.secure_eval import count_spec, drive_counts

    replies = FlowerTransport(grid, nodes, timeout=timeout).request(
        "evaluate", dict.fromkeys(nodes, _round_start(server, config.protect == "he"))
    )
    spec, classes = count_spec(server.protocol), config.classes or 2

    def drive(clients: list[int]):  # the count session's stages, each within the deadline
        transport = FlowerTransport(grid, nodes, timeout=timeout, prefix="evalstage")
        return drive_counts(spec, transport, round=server.round, clients=clients, classes=classes)

    counts = spec is not None and config.task == "classification"  # every site counts, masked
    return _pool_replies(replies, names, server.round, classes, drive if counts else None,
                         protection=config.protect)  # fmt: skip


def _pool_replies(
    replies: dict, names: dict[int, str], round: int, classes: int, drive=None, *,
    protection: str = "secagg",
):  # fmt: skip
    """:func:`_evaluate`'s result from the sites' replies (``Reply`` per site id). With
    ``drive`` (under secagg, classification: runs the count session over the given sites),
    every site sends its counts masked and the pooled metrics are those of the revealed sum
    (:func:`~fedshield.engine.secure_eval.pool_secure`); a site answering with its own metrics
    alone would turn the round's pooling into the site mean and leave the others' counts
    unsummed, so it fails instead."""
    from fedshield.engine.dp import worst_spent
    from fedshield.engine.evaluation import pool_evaluations
    from fedshield.engine.secure_eval import pool_secure
    from fedshield.errors import InvalidMessage

    evaluations, counted, digests, spent, failed = {}, {}, set(), [], {}
    for cid in sorted(replies):
        if replies[cid].error and cid in names:
            failed[names[cid]] = replies[cid].error
        if not replies[cid].data:  # dropped, failed, or a site without a test set
            continue
        try:
            evaluation, digest, site_spent, masked = _site_result(
                replies[cid].data, cid, round, classes, secure=drive is not None
            )
        except (InvalidMessage, ValueError) as exc:  # that site's failure, not the round's
            failed[names[cid]] = f"{type(exc).__name__}: {exc}"
            continue
        if masked:
            counted[cid] = (names[cid], evaluation)
        else:
            evaluations[names[cid]] = evaluation
        digests.add(digest)
        spent += [site_spent] if site_spent else []
    # Under he every site holds the model; they agree unless one missed an aggregate.
    digest = digests.pop() if len(digests) == 1 else None
    spent = worst_spent(spent) if spent else None
    if counted and not evaluations:  # every evaluating site sends its counts masked
        outcome = drive(sorted(counted))
        pooled = pool_secure(outcome, counted, failed, classes=classes, protection=protection)
        return (*pooled, digest, spent)
    evaluations.update(counted.values())  # some site has only its own metrics: the site mean
    return (*pool_evaluations(evaluations, failed), digest, spent)


def _site_result(data: bytes, cid: int, round: int, classes: int, *, secure: bool = False):
    """``(evaluation, model digest, DP-SGD spending, masked)`` of one site's evaluation
    reply: a :class:`~fedshield.engine.evaluation.SiteEvaluation`, or the site's own metrics
    alone (a dict: a ``ClientAlgo``, an ``evaluate_fn``) where its summary is empty; under
    ``secure`` (secagg), ``masked`` says the site opened a count session for its summary (its
    own metrics, a dict, then carry the ``n`` and ``loss`` the pooled loss needs).

    Raises:
        InvalidMessage: a malformed reply (its metrics, its DP-SGD record), or a site sending
            its summary in the clear under secagg (or a count session where there is none).
    """
    from fedshield import wire
    from fedshield.engine.dp import site_spent
    from fedshield.engine.secure_eval import own_metrics
    from fedshield.errors import InvalidMessage
    from fedshield.protocols.registry import MODEL_BROADCAST

    message = wire.parse(data)
    message.expect(protocol=MODEL_BROADCAST, stage=1, round=round, sender=cid)
    message.require_fields(5)
    summary = message.array(0, dtype="<f8")
    metrics = message.raw(1, max_len=1 << 16)
    masked = message.raw(4, max_len=1) == b"\x01"
    if secure and not masked:  # its summary in the clear, or its own metrics alone
        raise InvalidMessage(
            "the run sums evaluation summaries under secagg: a site sends its counts in a "
            "count session, never in the clear nor its own metrics alone"
        )
    if masked and (summary.size or not secure):
        raise InvalidMessage(
            "the run sums evaluation summaries under secagg: a site sends its counts in a "
            "count session, never in the clear" if secure else
            "this run sums summaries in the clear: there is no count session to open"
        )  # fmt: skip
    rest = message.raw(2, max_len=32).hex() or None, message.raw(3, max_len=1 << 16)
    evaluation = own_metrics(metrics) if masked else _clear_evaluation(summary, metrics, classes)
    return evaluation, rest[0], site_spent(rest[1]) if rest[1] else None, masked


def _clear_evaluation(summary, metrics: bytes, classes: int):
    """A site's evaluation sent in the clear: its summary and own metrics, or its own metrics
    alone."""
    from fedshield.engine.evaluation import EvaluationSummary, SiteEvaluation, site_metrics

    if summary.size:
        evaluation = SiteEvaluation.parse(summary, metrics, classes=classes)
    else:  # a site's own metrics alone; of an empty test set, with an empty summary
        evaluation = site_metrics(metrics)
        if evaluation.get("n") == 0:
            evaluation = SiteEvaluation(EvaluationSummary.empty(classes), evaluation)
    return evaluation


def _plain(value):
    """JSON-ready copies of records (numpy scalars to Python)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()  # numpy scalars
    return value
