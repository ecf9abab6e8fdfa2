"""Test and development certificates for a Flower deployment, made with ``cryptography``.

- a CA (self-signed, ECDSA P-384) whose certificate every SuperNode and the ``flwr`` CLI
  trust (``root-certificates``);
- the SuperLink's TLS certificate, signed by that CA, for the IP addresses and DNS names the
  others reach it at (127.0.0.1 and ``localhost`` are always included: the SuperLink's own
  SuperExec connects to it on loopback);
- one SuperNode authentication key pair per site: ECDSA P-384 (a NIST curve, which Flower
  1.42 requires), the private key in OpenSSH format (``flower-supernode
  --auth-supernode-private-key``), the public key as an OpenSSH line (``flwr supernode
  register``).

For trying a deployment out and for tests. A production federation uses its own PKI.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedshield.errors import ConfigError

__all__ = [
    "DevCertificates",
    "load_supernode_public_key",
    "write_dev_certificates",
    "write_supernode_keys",
]

_VALID_DAYS = 365
_NIST_CURVES = ("secp256r1", "secp384r1", "secp521r1")


@dataclass(frozen=True)
class DevCertificates:
    """Paths of what :func:`write_dev_certificates` wrote."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    supernode_keys: dict[int, tuple[Path, Path]]  # site id -> (private key, public key)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedshield development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _san(addresses: list[str]) -> x509.SubjectAlternativeName:
    """IP addresses as IP entries, anything else as a DNS name; loopback always."""
    entries: list[x509.GeneralName] = []
    for item in dict.fromkeys([*addresses, "127.0.0.1", "localhost"]):
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(item)))
        except ValueError:
            if not item or any(c in item for c in " /:"):
                raise ConfigError(
                    f"server address {item!r}: give an IP address or a DNS name, without a "
                    "port (the certificate names the host)"
                ) from None
            entries.append(x509.DNSName(item))
    return x509.SubjectAlternativeName(entries)


def _certificates(addresses: list[str]) -> tuple[bytes, bytes, bytes]:
    """``(CA certificate, server certificate, server key)`` as PEM."""
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=_VALID_DAYS)
    ca_key, server_key = _key(), _key()
    ca_name = _name("fedshield development CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )  # key_cert_sign and crl_sign only
        .sign(ca_key, hashes.SHA384())
    )
    server = (
        x509.CertificateBuilder()
        .subject_name(_name("fedshield SuperLink"))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_san(addresses), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    pem = serialization.Encoding.PEM
    return ca.public_bytes(pem), server.public_bytes(pem), _pem_key(server_key)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Write a file that must not exist yet, with ``mode`` from its creation on."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise ConfigError(
            f"{path} exists: write into an empty folder (nothing is overwritten)"
        ) from None
    with os.fdopen(fd, "wb") as file:
        file.write(data)


def write_supernode_keys(out: Path, site: int) -> tuple[Path, Path]:
    """Site ``site``'s SuperNode authentication key pair in ``out``: ``site<i>.key``
    (OpenSSH private key, mode 0600) and ``site<i>.pub`` (OpenSSH public key line)."""
    key = _key()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    paths = (out / f"site{site}.key", out / f"site{site}.pub")
    _write_new(paths[0], private, 0o600)
    _write_new(paths[1], public + f" fedshield-site{site}\n".encode(), 0o644)
    return paths


def write_dev_certificates(out: Path, *, addresses: list[str], sites: int) -> DevCertificates:
    """Write a CA, the SuperLink's certificate for ``addresses`` and ``sites`` SuperNode key
    pairs into ``out`` (created; it must hold none of these files).

    Raises:
        ConfigError: a file would be overwritten, an address is not a host, or ``sites < 0``.
    """
    if sites < 0:
        raise ConfigError(f"--sites must be at least 0, got {sites}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ca, cert, key = _certificates(list(addresses))
    paths = (out / "ca.crt", out / "server.pem", out / "server.key")
    for path, data, mode in zip(paths, (ca, cert, key), (0o644, 0o644, 0o600), strict=True):
        _write_new(path, data, mode)
    keys = {site: write_supernode_keys(out, site) for site in range(sites)}
    return DevCertificates(*paths, supernode_keys=keys)


def load_supernode_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    """A SuperNode's public key as Flower 1.42 registers it: one OpenSSH line of an ECDSA key
    on a NIST curve (``ecdsa-sha2-nistp384 AAAA...``).

    Raises:
        ConfigError: the file is missing, or holds anything else (naming the file).
    """
    path = Path(path)
    try:
        key = serialization.load_ssh_public_key(path.read_bytes())
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot read the SuperNode public key ({exc.strerror})"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in _NIST_CURVES:
        raise ConfigError(
            f"{path}: not a SuperNode public key; Flower wants one OpenSSH line of an ECDSA "
            "key on a NIST curve (`fedshield deploy certs` writes site<i>.pub)"
        )
    return key
