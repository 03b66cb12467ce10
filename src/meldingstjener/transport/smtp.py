"""ebXML over SMTP: mail one packaged message (or signal) to a partner's EDI address.

The endpoint is ``mailto:<EDI address>`` (from the address register or the CPA). Every attempt
gets a NEW MIME Message-Id: receivers drop a repeated Message-Id as the same mail delivered
twice, while a deliberate resend of the same ebXML message must reach the receiver's MSH, whose
eb:MessageId duplicate check then answers it with the original signal.

Before connecting, two refusals that no retry can fix: the mail would exceed the network's size
limit (``too-large``), or the address lies in the other environment's EDI domains
(``environment-guard``: a test server never mails production, a production server never mails
test). Connection, TLS, authentication problems and 4xx answers are retryable. A 5xx answer to
the recipient or to the mail itself (RCPT TO, the end of the upload, 552 too large) is final;
a 5xx from our own submission server before that (its greeting, EHLO, STARTTLS, MAIL FROM:
"530 Must issue a STARTTLS command first", "550 5.7.1 sender not owned") is about this server's
setup, not the message: retryable, as ``smtp-session-refused`` or ``smtp-sender-refused``, whose
detail (as that of ``smtp-tls-failed`` and ``smtp-auth-failed``) says to look at the [smtp]
settings, so that the messages wait (with the partner-unreachable alert) until the setup is
mended instead of failing for good at once.

Memory: a file body is streamed to the server in chunks during DATA (with the dot-stuffing SMTP
needs), so a 50 MB message is never held whole by this module. A stored message that is not
mail-safe (packaged binary for HTTP) is re-encoded part by part into an unnamed temporary file
in ``spool_dir`` (its payload read from the stored file as it is written), and sent from there.
"""

from __future__ import annotations

import io
import smtplib
import ssl
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote

from meldingstjener.ebxml.codes import EbxmlError
from meldingstjener.ebxml.mime import (
    MimeMessage,
    mail_headers,
    new_content_id,
    render_message,
    unpackage,
    write_package,
)
from meldingstjener.transport.base import (
    Delivery,
    TransportFailure,
    TransportResult,
    body_missing,
    body_size,
    tls_failure,
)

NETWORK_MAX_MAIL_BYTES = 51_200_000
DEFAULT_TEST_DOMAINS = ("testedi.nhn.no", "samsvar.nhn.no")
DEFAULT_PROD_DOMAINS = ("edi.nhn.no",)
_CHUNK = 1024 * 1024
_DEFAULT_PORTS = {"starttls": 587, "tls": 465, "none": 25}
_MAX_LINE = 998  # RFC 5322 2.1.1: longer lines are broken by relays (and signatures with them)


def mail_address(endpoint: str) -> str:
    """The address of a ``mailto:`` endpoint (a bare address is accepted too)."""
    value = endpoint.strip()
    if value.lower().startswith("mailto:"):
        value = unquote(value[len("mailto:") :].split("?", 1)[0])
    local, at, domain = value.rpartition("@")
    if not at or not local or not domain or any(c in value for c in " \t\r\n<>,;"):
        raise TransportFailure(
            "bad-endpoint", f"{endpoint[:80]!r} is not a mailto: EDI address", retryable=False
        )
    return f"{local}@{domain.lower()}"


def _in_domains(domain: str, domains: Iterable[str]) -> bool:
    """``domain`` is one of ``domains`` or below one of them (``a.edi.nhn.no`` is below
    ``edi.nhn.no``; ``testedi.nhn.no`` is not)."""
    domain = domain.lower().rstrip(".")
    return any(domain == d.lower() or domain.endswith("." + d.lower()) for d in domains)


@dataclass(frozen=True)
class EnvironmentGuard:
    """Which EDI domains this server must never mail, given its environment."""

    environment: str = "test"
    test_domains: Sequence[str] = DEFAULT_TEST_DOMAINS
    prod_domains: Sequence[str] = DEFAULT_PROD_DOMAINS

    def check(self, address: str) -> None:
        domain = address.rpartition("@")[2]
        if self.environment == "prod":
            forbidden, other = self.test_domains, "test"
            # A test domain can sit below a production one; the more specific list wins.
        else:
            forbidden, other = self.prod_domains, "production"
            if _in_domains(domain, self.test_domains):
                return
        if _in_domains(domain, forbidden):
            raise TransportFailure(
                "environment-guard",
                f"a {self.environment} server does not send to the {other} EDI domain {domain}",
                retryable=False,
            )


def dot_stuffed(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The DATA stream for ``chunks`` (CRLF-terminated lines expected): every line starting with
    ``.`` gets another ``.`` (RFC 5321 4.5.2), across chunk borders; the last line is closed
    with CRLF when it was not."""
    at_line_start = True
    last = b"\n"
    for chunk in chunks:
        if not chunk:
            continue
        stuffed = chunk.replace(b"\n.", b"\n..")
        if at_line_start and stuffed.startswith(b"."):
            stuffed = b"." + stuffed
        at_line_start = stuffed.endswith(b"\n")
        last = stuffed[-1:]
        yield stuffed
    if last != b"\n":
        yield b"\r\n"


def mail_safe(chunks: Iterable[bytes]) -> bool:
    """Whether the bytes can travel in a 7bit mail unchanged: ASCII, CRLF line ends only, no
    line over 998 characters. Scans chunk by chunk, so a file is never read whole for this."""
    line = 0
    carry = b""
    for chunk in chunks:
        data = carry + chunk
        if not data.isascii() or b"\0" in data:
            return False
        # A CR at the end is held back: its LF may begin the next chunk.
        carry = b"\r" if data.endswith(b"\r") else b""
        lines = data[: len(data) - len(carry)].split(b"\r\n")
        if any(b"\r" in piece or b"\n" in piece for piece in lines):
            return False
        if len(lines) > 1:
            if line + len(lines[0]) > _MAX_LINE or any(len(x) > _MAX_LINE for x in lines[1:-1]):
                return False
            line = 0
        line += len(lines[-1])
        if line > _MAX_LINE:
            return False
    return not carry


def reencode_for_mail(content_type: str, body: bytes) -> tuple[str, bytes]:
    """The same ebXML message with every part base64 (what mail carries unharmed). Signatures
    cover decoded part contents, so changing the transfer encoding keeps them valid."""
    sink = io.BytesIO()
    new_type = reencode_file_for_mail(content_type, body, sink)
    return new_type, sink.getvalue()


def reencode_file_for_mail(content_type: str, body: bytes | Path, sink: BinaryIO) -> str:
    """:func:`reencode_for_mail` for a message in a file (or in memory), written to ``sink``
    in pieces: the payload parts stay in ``body`` and are read from it as they are encoded, so
    a 35 MB message costs a few MB, not its size several times over. Returns the new
    Content-Type."""
    message = _unpackaged(content_type, body)
    return write_package(
        sink,
        message.envelope_xml,
        list(message.attachments.values()),
        transfer_encoding="base64",
        envelope_content_id=message.start or None,
    )


def _unpackaged(content_type: str, body: bytes | Path) -> MimeMessage:
    try:
        return unpackage(content_type, body)
    except EbxmlError as exc:
        raise TransportFailure(
            "not-mailable", f"the message cannot be prepared for mail: {exc}", retryable=False
        ) from None
    except OSError as exc:
        raise body_missing(exc) from None


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            yield chunk


END_OF_DATA_SECONDS = 600.0


@dataclass
class SmtpTransport:
    """Sends ebXML mail through one SMTP server. A connection per send: mail volumes are low
    and a fresh connection never carries a half-broken session into the next message."""

    host: str
    from_address: str
    port: int | None = None
    security: str = "starttls"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout_seconds: float = 60.0
    max_mail_bytes: int = NETWORK_MAX_MAIL_BYTES
    guard: EnvironmentGuard = field(default_factory=EnvironmentGuard)
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False)
    message_id_host: str = "meldingstjener"
    spool_dir: Path | None = None  # where a re-encoded mail is written (default: the temp dir)
    channel: str = field(default="smtp", init=False)

    def __post_init__(self) -> None:
        if self.security not in _DEFAULT_PORTS:
            raise ValueError(f"security must be starttls, tls or none, not {self.security!r}")

    def render_head(
        self, delivery: Delivery, to_address: str, content_type: str | None = None
    ) -> bytes:
        """The mail's header block (and the blank line after it), with a fresh Message-Id.
        ``content_type``: the body's as mailed, when re-encoded."""
        headers = mail_headers(
            content_type=content_type or delivery.content_type,
            from_address=self.from_address,
            to_address=to_address,
            message_id=new_content_id(self.message_id_host),
            subject=f"ebXML {delivery.ebxml_message_id}" if delivery.ebxml_message_id else None,
        )
        return render_message(headers, b"")

    def send(self, delivery: Delivery) -> TransportResult:
        to_address = mail_address(delivery.endpoint)
        self.guard.check(to_address)
        # Checked before anything is read: a too-large message never costs a read or a connection.
        self._check_size(len(self.render_head(delivery, to_address)) + body_size(delivery.body))
        with self._mailable(delivery) as (content_type, body_bytes, body):
            head = self.render_head(delivery, to_address, content_type)
            size = len(head) + body_bytes
            self._check_size(size)  # again: base64 re-encoding makes a body a third larger
            # [smtp] timeout_seconds, not the delivery's own wait (set for HTTP): the operator
            # knows the relay, and a shorter wait here turned a slow relay's acceptance into a
            # failure, a resend of the whole mail and in the end a false "not delivered".
            server = self._connect(self.timeout_seconds)
            try:
                self._transfer(server, to_address, size, _prepend(head, body))
            finally:
                _quietly_quit(server)
        return TransportResult(status_code=250)

    @contextmanager
    def _mailable(self, delivery: Delivery) -> Iterator[tuple[str, int, Iterable[bytes]]]:
        """The body as mail carries it: its Content-Type, size and bytes in pieces. The
        delivery's own when it is mail-safe; else re-encoded (signals and messages are
        packaged binary for HTTP: one long XML line that relays would break), a stored one
        into a temporary file that is gone when the block ends."""
        body = delivery.body
        if not isinstance(body, Path):
            if mail_safe([body]):
                yield delivery.content_type, len(body), [body]
            else:
                content_type, new_body = reencode_for_mail(delivery.content_type, body)
                yield content_type, len(new_body), [new_body]
            return
        try:
            safe = mail_safe(_file_chunks(body))
        except OSError as exc:
            raise body_missing(exc) from None
        if safe:
            yield delivery.content_type, body_size(body), _file_chunks(body)
            return
        with self._spool() as spool:
            try:
                content_type = reencode_file_for_mail(delivery.content_type, body, spool)
                size = spool.tell()
            except (OSError, EOFError) as exc:  # the spool's disk, or the stored file
                raise TransportFailure(
                    "mail-spool",
                    f"the mail could not be prepared on disk: {getattr(exc, 'strerror', exc)}",
                ) from None
            yield content_type, size, _handle_chunks(spool)

    def _spool(self) -> BinaryIO:
        """An unnamed temporary file (gone when closed, or with the process) on the data
        disk when ``spool_dir`` is set: the system's temp dir may be held in memory."""
        try:
            if self.spool_dir is not None:
                self.spool_dir.mkdir(parents=True, exist_ok=True)
            return tempfile.TemporaryFile(dir=self.spool_dir)
        except OSError as exc:
            raise TransportFailure(
                "mail-spool", f"the mail could not be prepared on disk: {exc.strerror or exc}"
            ) from None

    def close(self) -> None:
        """Nothing to release: every send opens and closes its own connection."""

    def _check_size(self, size: int) -> None:
        if size > self.max_mail_bytes:
            raise TransportFailure(
                "too-large",
                f"the mail would be {size:,} bytes; the limit is {self.max_mail_bytes:,} bytes "
                "per mail. Send the content another way or split it.",
                retryable=False,
            )

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port or _DEFAULT_PORTS[self.security]}"

    def _connect(self, timeout: float) -> smtplib.SMTP:
        port = self.port or _DEFAULT_PORTS[self.security]
        context = self.ssl_context or ssl.create_default_context()
        where = self.where
        try:
            if self.security == "tls":
                server: smtplib.SMTP = smtplib.SMTP_SSL(
                    self.host, port, timeout=timeout, context=context
                )
            else:
                server = smtplib.SMTP(self.host, port, timeout=timeout)
            try:
                self._greeted(server, "EHLO")
                if self.security == "starttls":
                    server.starttls(context=context)
                    self._greeted(server, "EHLO after STARTTLS")
                if self.username:
                    server.login(self.username, self.password or "")
            except BaseException:
                server.close()  # not left open until collected: the server waits on it
                raise
        except smtplib.SMTPAuthenticationError as exc:
            raise self._our_server_refused(
                "smtp-auth-failed",
                f"our login as {self.username} ({exc.smtp_code})",
                "username, password_file or password_env",
            ) from None
        except smtplib.SMTPNotSupportedError as exc:
            raise TransportFailure(
                "smtp-unsupported", f"{where} does not offer what is configured: {exc}"
            ) from None
        except ssl.SSLError as exc:
            raise self._our_side(
                "smtp-tls-failed",
                f"TLS with our own mail server {where} failed: {tls_failure(exc)}",
                "host, port, security, ca_file",
            ) from None
        except TimeoutError:
            raise TransportFailure("timeout", f"{where} did not answer in {timeout:g} s") from None
        except (smtplib.SMTPConnectError, smtplib.SMTPResponseException) as exc:
            # its greeting, HELO (before a login) or STARTTLS answered with a refusal
            step = (
                "its greeting"
                if isinstance(exc, smtplib.SMTPConnectError)
                else "HELO"
                if isinstance(exc, smtplib.SMTPHeloError)
                else "STARTTLS"
            )
            raise self._refused_us(step, exc.smtp_code, exc.smtp_error) from None
        except (OSError, smtplib.SMTPException) as exc:
            raise TransportFailure(
                "connect-failed", f"cannot reach the mail server {where}: {type(exc).__name__}"
            ) from None
        return server

    def _greeted(self, server: smtplib.SMTP, step: str) -> None:
        """EHLO, and HELO where the server does not know EHLO (RFC 5321 4.1.4). smtplib hands
        a refusal back instead of raising it: it would come up as a refusal of the mail."""
        code, text = server.ehlo()
        if code in (500, 502):  # command unknown: a server that speaks SMTP without extensions
            code, text = server.helo()
        if code != 250:
            raise self._refused_us(step, code, text)

    def _refused_us(self, step: str, code: int, text: bytes | str) -> TransportFailure:
        """Our own submission server refused this server before any message was named: a
        matter of our setup, which no message can mend, and which mending mends for all (a
        4xx: a passing state of the server, said as such)."""
        said = (text.decode("ascii", "replace") if isinstance(text, bytes) else text)[:200]
        if code < 500:
            return TransportFailure(f"smtp-{code}", f"{step}: {self.where} answered {code} {said}")
        return self._our_server_refused(
            "smtp-session-refused",
            f"this server at {step} ({code} {said})",
            "host, port, security, username",
        )

    def _our_server_refused(self, failure: str, what: str, settings: str) -> TransportFailure:
        """Our own submission server refused ``what`` (see :meth:`_our_side`)."""
        return self._our_side(failure, f"our own mail server {self.where} refused {what}", settings)

    @staticmethod
    def _our_side(failure: str, what: str, settings: str) -> TransportFailure:
        """A failure with our own submission server (``what`` happened), before any message
        was named: a matter of this server's setup. The detail says which of our ``[smtp]
        settings`` to check, so that nobody looks at the partner whose partner-unreachable
        alert it lands in. Retryable: the messages wait until the setup is mended."""
        return TransportFailure(
            failure,
            f"{what}; check this server's [smtp] settings ({settings}) with the mail "
            "provider: the partner is not the problem",
        )

    def _transfer(
        self, server: smtplib.SMTP, to_address: str, size: int, data: Iterable[bytes]
    ) -> None:
        options = [f"SIZE={size}"] if server.has_extn("size") else []
        # once the end of the DATA is out, the relay may have taken the mail whatever befalls
        # its answer: a failure after that is maybe_delivered
        ended = False
        try:
            code, text = server.mail(self.from_address, options)
            if code >= 500 and code != 552:  # 552: this mail is too large, which is final
                # "530 Must issue a STARTTLS command first", "550 5.7.1 sender not owned by
                # user": our server refuses our sender for a reason of our setup
                said = text.decode("ascii", "replace")[:200]
                raise self._our_server_refused(
                    "smtp-sender-refused",
                    f"our sender {self.from_address} (MAIL FROM: {code} {said})",
                    "security, username, edi_address",
                )
            _expect((code, text), "MAIL FROM")
            _expect(server.rcpt(to_address), f"RCPT TO {to_address}")
            _expect(server.docmd("DATA"), "DATA", wanted=354)
            for piece in dot_stuffed(data):
                server.send(piece)
            server.send(b".\r\n")
            ended = True
            # A relay may scan a large mail before it answers the end of the upload: RFC 5321
            # (4.5.3.2.6) has the client wait ten minutes for that answer. Given up earlier,
            # the relay may still accept it, and the retry sends it a second time.
            if server.sock is not None:
                server.sock.settimeout(max(self.timeout_seconds, END_OF_DATA_SECONDS))
            try:
                reply = server.getreply()
            finally:
                if server.sock is not None:  # QUIT is a step like any other
                    server.sock.settimeout(self.timeout_seconds)
            _expect(reply, "end of DATA")
        except smtplib.SMTPServerDisconnected:
            # smtplib says so of a time-out waiting for an answer too
            raise TransportFailure(
                "connection-lost",
                "the connection to the mail server closed or timed out after the whole mail "
                "was sent, before its answer"
                if ended
                else "the mail server closed the connection during the transfer",
                maybe_delivered=ended,
            ) from None
        except TimeoutError:
            after = " after the whole mail was sent" if ended else ""
            raise TransportFailure(
                "timeout", f"the mail server stopped answering{after}", maybe_delivered=ended
            ) from None
        except OSError as exc:
            when = "after the whole mail was sent" if ended else "during the transfer"
            raise TransportFailure(
                "connection-lost",
                f"the connection broke {when}: {exc.strerror}",
                maybe_delivered=ended,
            ) from None


def _handle_chunks(handle: BinaryIO) -> Iterator[bytes]:
    handle.seek(0)
    while chunk := handle.read(_CHUNK):
        yield chunk


def _prepend(head: bytes, body: Iterable[bytes]) -> Iterator[bytes]:
    yield head
    yield from body


def _expect(reply: tuple[int, bytes], step: str, *, wanted: int | None = None) -> None:
    code, text = reply
    ok = code == wanted if wanted is not None else 200 <= code < 300
    if ok:
        return
    said = text.decode("ascii", "replace")[:200]
    if 400 <= code < 500:
        raise TransportFailure(f"smtp-{code}", f"{step}: the server answered {code} {said}")
    raise TransportFailure(
        f"smtp-{code}", f"{step}: the server refused with {code} {said}", retryable=False
    )


def _quietly_quit(server: smtplib.SMTP) -> None:
    try:
        server.quit()
    except (OSError, smtplib.SMTPException):
        server.close()


__all__ = [
    "DEFAULT_PROD_DOMAINS",
    "DEFAULT_TEST_DOMAINS",
    "NETWORK_MAX_MAIL_BYTES",
    "EnvironmentGuard",
    "SmtpTransport",
    "dot_stuffed",
    "mail_address",
    "mail_safe",
    "reencode_file_for_mail",
    "reencode_for_mail",
]
