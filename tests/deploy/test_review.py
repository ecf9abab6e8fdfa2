"""A hospital's likely mistakes with ``fedshield site`` and its own data spec, each refused at
start-up with a typed error that says what to fix (found by following docs/deploy-flower.md
as a hospital's engineer would)."""

import contextlib
import json
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
from image_folders import png_site, write_spec

from fedshield.crypto.identity import Identity
from fedshield.deploy import load_site_config, write_dev_certificates
from fedshield.deploy.site import run_site
from fedshield.engine.experiment import RunConfig, enrol_sites
from fedshield.engine.flower.deploy import FlowerRunError
from fedshield.engine.flower.site import SiteProcess, _with_own_data
from fedshield.errors import ConfigError
from fedshield.protocols.roster import Roster

_LABELS = [0, 1] * 5  # 10 images: 8 to train, 2 to test (test_fraction 0.2)
_RUN = {"sites": 2, "protect": "secagg", "rounds": 1, "max_weight": 8.0, "in_channels": 1,
        "classes": 2, "class_names": ["benign", "malignant"], "dataset": "site-data"}  # fmt: skip


def _spec(tmp_path: Path, name: str = "site0", **keys) -> Path:
    png_site(tmp_path / name, _LABELS, rgb=keys.get("channels") == 3)
    values = {"root": name, "classes": ["benign", "malignant"], "test_fraction": 0.2, **keys}
    return write_spec(tmp_path / f"{name}.yaml", **values)


def _site_toml(tmp_path: Path, run: dict, *, data: str | None = "site0.yaml") -> Path:
    """A hospital's site.toml as docs/deploy-flower.md writes it (its own files only)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    certs = write_dev_certificates(tmp_path / "certs", addresses=["127.0.0.1"], sites=1)
    config = RunConfig(**{**run, "transport": "flower"})
    roster = enrol_sites(config, tmp_path / "enrolment")
    (tmp_path / "run.json").write_text(json.dumps(run))
    lines = [
        "site = 0",
        'superlink = "127.0.0.1:9"',
        f'ca_cert = "{certs.ca_cert}"',
        f'auth_key = "{certs.supernode_keys[0][0]}"',
        f'roster = "{roster}"',
        f'identity = "{tmp_path / "enrolment" / "site0.identity"}"',
        'run_config = "run.json"',
        "connect_timeout = 5.0",
    ]
    if data is not None:
        lines.append(f'data = "{data}"')
    path = tmp_path / "site.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_own_data_and_the_runs_dataset_must_agree(tmp_path):
    """A site with its own spec in a run whose options say ``synthetic`` (the docs' example
    before) would build another model than the server's and than ``fedshield run
    --site-data``; a site that forgets its spec in a ``site-data`` run would train on
    synthetic data. Both are refused, naming the file and what to write."""
    _spec(tmp_path)
    synthetic = {**_RUN, "dataset": "synthetic"}
    with pytest.raises(ConfigError, match=r'site\.toml: data: .*write "dataset": "site-data"'):
        load_site_config(_site_toml(tmp_path / "a", synthetic, data="../site0.yaml"))
    with pytest.raises(ConfigError, match=r"--data: .*dataset 'synthetic'"):
        load_site_config(
            _site_toml(tmp_path / "b", synthetic, data=None), data=tmp_path / "site0.yaml"
        )
    with pytest.raises(ConfigError, match=r'site\.toml: data: missing: .*data = "spec\.yaml"'):
        load_site_config(_site_toml(tmp_path / "c", _RUN, data=None))
    config = load_site_config(
        _site_toml(tmp_path / "d", _RUN, data=None), data=tmp_path / "site0.yaml"
    )
    assert config.data == tmp_path / "site0.yaml" and config.run.model == "cnn"
    assert RunConfig(site_data=["x.yaml", "y.yaml"], sites=2).model == config.run.model


def _site_process(tmp_path: Path, run: dict, spec: Path) -> SiteProcess:
    config = _with_own_data(RunConfig(**{**run, "transport": "flower"}), 0, spec)
    roster = enrol_sites(config, tmp_path / "enrolment")
    identity = Identity.load(tmp_path / "enrolment" / "site0.identity")
    return SiteProcess(config, 0, Roster.load(roster), identity)


def test_a_site_whose_data_contradicts_the_public_parameters_is_refused(tmp_path):
    """More training images than ``max_weight`` would cap the site's FedAvg weight silently;
    other channels than ``in_channels`` give another model than the server's."""
    spec = _spec(tmp_path)
    assert _site_process(tmp_path / "ok", _RUN, spec).runtime.site.weight == 8
    with pytest.raises(ConfigError, match=r"8 training examples, more than the run's max_weight"):
        _site_process(tmp_path / "mw", {**_RUN, "max_weight": 7.0}, spec)
    rgb = _spec(tmp_path, "rgb", channels=3)
    with pytest.raises(ConfigError, match=r"3 channel\(s\), the run's in_channels is 1"):
        _site_process(tmp_path / "ch", _RUN, rgb)


def test_the_class_order_is_pinned_across_hosts(tmp_path):
    """Each host reads its own spec alone, so only the run's ``class_names`` can tell that a
    hospital listed the classes in another order (its labels would train the other output):
    such a site is refused, and a ``site-data`` run without ``class_names`` too."""
    swapped = _spec(tmp_path, classes=["malignant", "benign"])
    with pytest.raises(ConfigError, match=r"lists the classes \['malignant', 'benign'\], but"):
        _site_process(tmp_path / "swapped", _RUN, swapped)
    unpinned = {k: v for k, v in _RUN.items() if k != "class_names"}
    with pytest.raises(ConfigError, match=r"class_names: missing"):
        load_site_config(_site_toml(tmp_path / "u", unpinned, data=None), data=swapped)


def test_a_site_process_that_fails_at_start_shows_its_error(tmp_path):
    """``fedshield site`` with a spec listing other classes: the console's error is the site
    process's own (the spec and what to fix), not only the log's path; nothing is left."""
    _spec(tmp_path, classes=["benign", "malignant", "other"])
    config = load_site_config(_site_toml(tmp_path, _RUN, data="site0.yaml"))
    with pytest.raises(FlowerRunError, match=r"lists 3 classes .*list the federation's classes"):
        run_site(config)
    assert not (config.logs / "supernode.log").exists()  # it stopped before its SuperNode


@contextlib.contextmanager
def _tls_listener(cert: Path, key: Path):
    """A TLS server on loopback presenting ``cert`` (it only completes handshakes); its
    ``host:port``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with contextlib.suppress(OSError), conn, context.wrap_socket(conn, server_side=True):
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}"
    finally:
        done.set()
        thread.join()
        server.close()


@pytest.mark.flower
def test_a_wrong_ca_or_address_is_named_and_nothing_waits_for_minutes(tmp_path):
    """A SuperLink whose certificate another CA signed: the SuperNode fails its handshake
    and the site says to check ca_cert; no SuperLink at the address: it gives up after
    connect_timeout and says to check the address. Real SuperNodes, real TLS."""
    _spec(tmp_path)
    other = write_dev_certificates(tmp_path / "other", addresses=["127.0.0.1"], sites=0)
    toml = _site_toml(tmp_path, _RUN)
    with _tls_listener(other.server_cert, other.server_key) as address:
        toml.write_text(toml.read_text().replace("127.0.0.1:9", address))
        start = time.monotonic()
        with pytest.raises(FlowerRunError, match=r"does not verify against ca_cert .*ca\.crt"):
            run_site(load_site_config(toml))
        assert time.monotonic() - start < 60
    start = time.monotonic()
    with pytest.raises(
        FlowerRunError, match=r"no SuperLink answered at .* within connect_timeout 5 s"
    ):
        run_site(load_site_config(toml))  # the listener is gone: nothing at that address
    assert time.monotonic() - start < 60
