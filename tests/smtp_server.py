"""A real SMTP server on loopback for the tests (aiosmtpd), and a self-signed certificate for it."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import attrs
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

HOST = "127.0.0.1"
USER = "relay"
PASSWORD = "correct horse battery staple"
#: Bounds every wait on the server thread.
READY_TIMEOUT = 5.0


def free_port() -> int:
    """A port nobody listens on right now (aiosmtpd cannot start on port 0)."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


@attrs.frozen
class Certificate:
    """A self-signed certificate for 127.0.0.1 and the contexts that serve and trust it."""

    cert_path: Path
    key_path: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_path, self.key_path)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A default (verifying) client context that trusts this certificate only."""
        return ssl.create_default_context(cafile=str(self.cert_path))


def make_certificate(folder: Path) -> Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "email-change test SMTP")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "smtp-cert.pem", folder / "smtp-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Certificate(cert_path, key_path)


class Sink:
    """Keeps every accepted message; refuses recipients or data when told to."""

    def __init__(self) -> None:
        self.envelopes: list[Any] = []
        self.logins: list[tuple[str, str]] = []
        self.refuse_rcpt: str | None = None
        #: Replies for some recipients only (lower-case address -> reply).
        self.refuse_rcpt_for: dict[str, str] = {}
        self.refuse_data: str | None = None

    async def handle_RCPT(
        self, _server: Any, _session: Any, envelope: Any, address: str, _options: list[str]
    ) -> str:
        if self.refuse_rcpt:
            return self.refuse_rcpt
        if address.lower() in self.refuse_rcpt_for:
            return self.refuse_rcpt_for[address.lower()]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:
        if self.refuse_data:
            return self.refuse_data
        self.envelopes.append(envelope)
        return "250 Message accepted"

    def authenticate(
        self, _server: Any, _session: Any, _envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == USER.encode()
            and auth_data.password == PASSWORD.encode()
        )
        if ok:
            self.logins.append((mechanism, auth_data.login.decode()))
        # handled=False: aiosmtpd answers 535 itself (handled=True leaves the client waiting).
        return AuthResult(success=ok, handled=False)

    def messages(self) -> list[EmailMessage]:
        import email
        import email.policy

        out = []
        for envelope in self.envelopes:
            parsed = email.message_from_bytes(
                envelope.original_content, policy=email.policy.default
            )
            assert isinstance(parsed, EmailMessage)
            out.append(parsed)
        return out


@contextmanager
def smtp_server(sink: Sink, port: int | None = None, **smtp_options: Any) -> Iterator[int]:
    """Run aiosmtpd on loopback; yields its port. ``smtp_options`` go to aiosmtpd's SMTP."""
    port = port or free_port()
    controller = Controller(
        sink, hostname=HOST, port=port, ready_timeout=READY_TIMEOUT, **smtp_options
    )
    controller.start()
    try:
        yield port
    finally:
        controller.stop()


@contextmanager
def silent_server() -> Iterator[int]:
    """A TCP listener that accepts and never says a word: the client must time out."""
    with socket.socket() as listener:
        listener.bind((HOST, 0))
        listener.listen(1)
        yield int(listener.getsockname()[1])
