"""Test key material for a Flower deployment, made with ``cryptography``: a CA, a TLS
server certificate for the SuperLink's address, and SuperNode authentication keys.

Flower 1.42 formats (``flwr/supernode/cli/flower_supernode.py``,
``flwr/cli/supernode/register.py``): a SuperNode's key is a NIST-curve EC key, its private
half in OpenSSH format (``--auth-supernode-private-key``), its public half as an OpenSSH
public key line (``flwr supernode register``). The SuperLink takes PEM files
(``--ssl-ca-certfile``, ``--ssl-certfile``, ``--ssl-keyfile``).
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["make_supernode_key", "make_tls"]

_PEM = serialization.Encoding.PEM


def _write_private(path: Path, data: bytes) -> None:
    path.touch(mode=0o600)
    path.write_bytes(data)


def _certificate(subject: str, key, issuer: str, signer, *, ca: bool, ips: list[str]):
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ips:
        names = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(signer, hashes.SHA256())


def make_tls(folder: Path, ips: list[str]) -> dict[str, Path]:
    """A fresh CA and a server certificate valid for ``ips``; paths of ``ca``, ``cert``,
    ``key`` (PEM) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("fedshield test CA", ca_key, "fedshield test CA", ca_key, ca=True, ips=[])
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _certificate("superlink", server_key, "fedshield test CA", ca_key, ca=False, ips=ips)
    paths = {"ca": folder / "ca.crt", "cert": folder / "server.pem", "key": folder / "server.key"}
    paths["ca"].write_bytes(ca.public_bytes(_PEM))
    paths["cert"].write_bytes(server.public_bytes(_PEM))
    _write_private(
        paths["key"],
        server_key.private_bytes(
            _PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )
    return paths


def make_supernode_key(folder: Path, name: str) -> tuple[Path, Path]:
    """A SuperNode authentication key pair (EC P-384, OpenSSH formats): (private, public)."""
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = folder / name, folder / f"{name}.pub"
    _write_private(
        private,
        key.private_bytes(_PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()),
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
    )
    return private, public
