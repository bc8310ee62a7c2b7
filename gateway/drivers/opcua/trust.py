"""Certificates and trust: the gateway's own certificate, and whether to trust a server's.

A server certificate is trusted when it is the pinned ``server_certificate``, when it is in the
trust list folder, or (``trust: tofu``) when it is the one first seen. A refused certificate is
kept under ``<state_dir>/opcua/rejected`` where an operator can inspect it and move it to the
trust list. The checks read and write files: run them off the event loop (``asyncio.to_thread``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from asyncua import ua
from asyncua.client.client import Client
from asyncua.crypto import security_policies
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.config.site import OpcUaDevice, OpcUaSecurityMode, OpcUaTrust
from gateway.drivers.base import DeviceUnavailable
from gateway.drivers.opcua.errors import AuthenticationFailed
from gateway.logs import get_logger

log = get_logger(__name__)


def load_certificate_der(path: Path) -> bytes:
    data = path.read_bytes()
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificate(data).public_bytes(serialization.Encoding.DER)
    return x509.load_der_x509_certificate(data).public_bytes(serialization.Encoding.DER)


def load_private_key_der(path: Path, password: str | None) -> bytes:
    data = path.read_bytes()
    secret = password.encode() if password else None
    if b"-----BEGIN" in data:
        key = serialization.load_pem_private_key(data, password=secret)
    else:
        key = serialization.load_der_private_key(data, password=secret)
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def certificate_uri(certificate_der: bytes) -> str | None:
    """The application URI in a certificate's subjectAltName, which servers match to the session's."""
    cert = x509.load_der_x509_certificate(certificate_der)
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = names.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


def fingerprint(certificate_der: bytes) -> str:
    """SHA-256 fingerprint as the colon-separated hex that certificate tools print."""
    digest = hashlib.sha256(certificate_der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def first_certificate(der: bytes) -> bytes:
    """A server may send its certificate followed by its chain: keep the leaf (one DER SEQUENCE)."""
    if len(der) < 4 or der[0] != 0x30:
        return der
    first = der[1]
    if first < 0x80:
        return der[: 2 + first]
    count = first & 0x7F
    length = int.from_bytes(der[2 : 2 + count], "big")
    return der[: 2 + count + length]


def _trusted_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".der", ".pem", ".crt", ".cer"))


def trust_dir(device: OpcUaDevice, state_dir: Path) -> Path:
    """Where trusted server certificates are (and, with tofu, stored)."""
    return device.security.trust_dir or state_dir / "opcua" / "trusted"


async def offered_certificate(device: OpcUaDevice) -> bytes:
    """The server certificate of the endpoint with the device's security, from GetEndpoints."""
    sec = device.security
    probe = Client(device.endpoint, timeout=device.timeout_s)
    endpoints = await probe.connect_and_get_server_endpoints()
    policy_uri = security_policies.SecurityPolicyBasic256Sha256.URI
    wanted = (
        ua.MessageSecurityMode.SignAndEncrypt
        if sec.mode is OpcUaSecurityMode.SIGN_AND_ENCRYPT
        else ua.MessageSecurityMode.Sign
    )
    offered = []
    presented: bytes | None = None
    for endpoint in endpoints:
        offered.append(f"{endpoint.SecurityPolicyUri.rsplit('#', 1)[-1]}/{endpoint.SecurityMode.name}")
        if endpoint.SecurityPolicyUri == policy_uri and endpoint.SecurityMode == wanted and endpoint.ServerCertificate:
            presented = first_certificate(endpoint.ServerCertificate)
    if presented is None:
        raise DeviceUnavailable(
            device.name,
            f"the server offers no endpoint with security {sec.policy}/{sec.mode} "
            f"(it offers {', '.join(sorted(set(offered))) or 'none'})",
        )
    return presented


def check_trust(device: OpcUaDevice, state_dir: Path, presented: bytes) -> None:
    """Raise :class:`AuthenticationFailed` unless the server certificate is trusted (blocking I/O)."""
    sec = device.security
    name = device.name
    seen = f"SHA-256 {fingerprint(presented)}"
    if sec.server_certificate is not None:
        try:
            pinned = load_certificate_der(sec.server_certificate)
        except (OSError, ValueError) as exc:
            raise DeviceUnavailable(name, f"cannot load server_certificate {sec.server_certificate}: {exc}") from exc
        if pinned != presented:
            raise AuthenticationFailed(
                name, f"{device.endpoint}: the server's certificate ({seen}) is not the pinned {sec.server_certificate}"
            )
        return
    folder = trust_dir(device, state_dir)
    if sec.trust is OpcUaTrust.TOFU:
        stored = folder / f"{name}.der"
        if not stored.exists():
            folder.mkdir(parents=True, exist_ok=True)
            temporary = stored.with_suffix(".der.tmp")
            temporary.write_bytes(presented)
            temporary.replace(stored)
            log.warning("opcua_certificate_trusted_on_first_use", device=name, fingerprint=seen, file=str(stored))
            return
        if stored.read_bytes() != presented:
            rejected = keep_rejected(device, state_dir, presented)
            raise AuthenticationFailed(
                name,
                f"{device.endpoint}: the server's certificate changed since it was first trusted "
                f"({seen}, kept in {rejected}); "
                f"if the server was re-keyed on purpose, delete {stored} to trust the new one",
            )
        return
    for path in _trusted_files(folder):
        try:
            if load_certificate_der(path) == presented:
                return
        except (OSError, ValueError):
            log.warning("opcua_trust_list_unreadable", device=name, file=str(path))
    rejected = keep_rejected(device, state_dir, presented)
    raise AuthenticationFailed(
        name,
        f"{device.endpoint}: the server's certificate ({seen}) is not in the trust list {folder}; "
        f"to trust it, move {rejected} there",
    )


def keep_rejected(device: OpcUaDevice, state_dir: Path, presented: bytes) -> Path:
    """Keep a refused certificate where an operator can inspect it and move it to trust_dir."""
    folder = state_dir / "opcua" / "rejected"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{device.name}-{hashlib.sha256(presented).hexdigest()[:16]}.der"
    path.write_bytes(presented)
    return path
