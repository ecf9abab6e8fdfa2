"""A Flower deployment across hosts: ``fedshield server``, ``fedshield site`` and
``fedshield deploy certs`` (copy-paste steps in ``docs/deploy-flower.md``).

Command lines (stable)::

    fedshield deploy certs --out DIR --server-address HOST [--server-address HOST2] [--sites N]
    fedshield server --config server.toml
    fedshield site --config site.toml [--data SPEC]

``deploy certs`` writes ``ca.crt``, ``server.pem``, ``server.key`` (0600) and, per site,
``site<i>.key`` (SuperNode private key, OpenSSH, 0600) and ``site<i>.pub`` (its public key).

``server.toml`` (relative paths are read from the file's folder; keys use underscores)::

    roster = "enrolment/roster.json"   # from `fedshield roster enrol`
    out = "results"                     # result.json, report.md, logs/
    run_config = "run.json"             # the run's options as JSON, or a [run] table

    [superlink]
    address = "10.0.0.1:9093"          # host:port the sites and flwr reach (one HTTPS port)
    listen = "0.0.0.0"                  # optional: the host it binds (default: address's)
    ca_cert = "certs/ca.crt"
    cert = "certs/server.pem"           # not with attach = true
    key = "certs/server.key"            # not with attach = true
    supernode_keys = ["certs/site0.pub", "certs/site1.pub", "certs/site2.pub"]
    attach = false                      # true: a SuperLink already runs on this host

    [deadlines]                         # optional, seconds from each phase's start
    join = 600.0                        # SuperNodes online (the server waits), then hello
    train = 600.0                       # also: keys, stage, evaluate, shutdown (Deadlines)

    [run]                               # RunConfig options, named as in run.json
    sites = 3
    protect = "secagg"
    rounds = 2
    max_weight = 100.0                  # required (the same everywhere)
    in_channels = 1                     # required
    # classes = 2                       # required unless the data is synthetic

``site.toml`` (only this site's paths)::

    site = 0
    superlink = "10.0.0.1:9093"
    ca_cert = "ca.crt"
    auth_key = "site0.key"              # this SuperNode's private key
    roster = "roster.json"
    identity = "site0.identity"         # from `fedshield roster enrol`
    data = "site0.yaml"                 # optional: this site's data spec
    logs = "logs"                       # optional (default: site<i>-logs beside the file)
    connect_timeout = 300.0             # optional: give up if the SuperLink refuses or is away
    run_config = "run.json"             # or a [run] table: the run's public parameters

Every unknown key, missing required key, wrongly typed value or missing file is a
:class:`~fedshield.errors.ConfigError` naming the file and the key.
"""

from __future__ import annotations

from fedshield.deploy.certs import (
    DevCertificates,
    load_supernode_public_key,
    write_dev_certificates,
    write_supernode_keys,
)
from fedshield.deploy.config import (
    ServerConfig,
    SiteConfig,
    SuperLinkSettings,
    load_server_config,
    load_site_config,
)

__all__ = [
    "DevCertificates",
    "ServerConfig",
    "SiteConfig",
    "SuperLinkSettings",
    "load_server_config",
    "load_site_config",
    "load_supernode_public_key",
    "write_dev_certificates",
    "write_supernode_keys",
]
