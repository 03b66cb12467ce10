"""The mail channel's glue: the SMTP transport from settings, and the mailbox collector thread.

Each collected mail goes through :meth:`MailIntake.on_mail`:

1. split headers and body (:mod:`meldingstjener.ebxml.mime_headers`); a mail without headers
   or Content-Type is unreadable -> quarantine;
2. :func:`meldingstjener.engine.inbound.receive` with ``channel="smtp"``: it stores the message
   and its signal in one commit (a refusal after its signature verified too, with the
   MessageError queued to its sender), or refuses (InboundRefused: unreadable, or refused
   before its signature verified, as a stale copy of a partner's certificate makes it); a
   message it has already (its eb:MessageId, from the same sender, signed by it) is not stored
   again and gets our signal again, whether the mailbox delivered the mail twice or the
   partner resent it;
   (before that, a bounce of one of our mails is recorded on its message with a
   ``mail-bounced`` alert, see :mod:`meldingstjener.engine.mail_bounces`, or quarantined as a
   bounce when it names none of our messages);
   or defers (InboundDeferred: its sender's signing certificate cannot be checked now,
   ``revocation_policy = "hard"`` with the CA's CRL and OCSP away): the mail stays in the box,
   its try not counted, until the message's TimeToLive passes; then it is quarantined as
   ``RevocationUnknown`` (:meth:`MailIntake._defer`);
3. return, and the collector deletes the mail from the box;
4. refused or unreadable, or failed in an unforeseen way in five rounds (counted as
   ``mail-failed:<hash>``) -> the raw mail is written to ``<data_dir>/quarantine/`` (fsync'd,
   named by its SHA-256 so writing it twice is harmless), an alert is raised, and
   :class:`~meldingstjener.transport.mailbox.Quarantine` tells the collector it may delete it.

A quarantined mail is taken in again by :meth:`MailIntake.reprocess` (``meldingstjener mail
reprocess``), through ``on_mail`` as if it were collected now.

A mail the mail server will not hand out never reaches ``on_mail``: :meth:`MailIntake.on_refused`
counts its tries by what the server names it with (UIDL, or UIDVALIDITY and UID), and from the
fifth on it is named in a ``mail-stuck`` alert. It cannot be quarantined: it cannot be read.
A mail that failed five times and cannot be put aside either (its file or its alert cannot be
written) stays in the box and is named in the same alert while it does.

Crash windows (the process may die between any two steps):

* after 2 committed, before the mailbox deletion: the mail is collected again and reaches
  ``receive`` again, whose eb:MessageId duplicate check does not store it twice and sends the
  original signal again. Nothing lost, nothing doubled.
* during 4, before the alert commit: collected again and quarantined again (same file name;
  the alert is deduplicated by the mail's hash).

The MIME Message-Id is not used to drop repeats: a partner that resends the same MIME (same
Message-Id) because our Acknowledgment did not reach it must get it again, and a forged mail
must not make a later real one with its Message-Id disappear.

A synchronous reply (SyncReply, or a sender we have no mail agreement with) has no way back by
mail: it stays in the message log as the receipt of the message and is not mailed to the
(unauthenticated) From address.
"""

from __future__ import annotations

import binascii
import hashlib
import io
import logging
import os
import re
import socket
import ssl
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO, NoReturn

from meldingstjener.config import ConfigError, MailboxSettings, Settings, SmtpSettings
from meldingstjener.ebxml.codes import EbxmlError
from meldingstjener.ebxml.mime_headers import (
    MAX_HEADER_BLOCK,
    bare_content_id,
    split_header_block,
)
from meldingstjener.ebxml.mime_source import Base64Decoder
from meldingstjener.engine import inbound
from meldingstjener.engine.alerts import AlertKind, keep_alert, raise_alert
from meldingstjener.engine.context import EngineContext
from meldingstjener.engine.mail_bounces import record_bounce
from meldingstjener.model.privacy import passed_through
from meldingstjener.store.payloads import Spool, make_durable_dir, private_file
from meldingstjener.store.types import utcnow
from meldingstjener.store.uow import EventKind, Store
from meldingstjener.transport.base import TransportFailure
from meldingstjener.transport.bounce import HeaderTooLong, is_bounce, read_bounce
from meldingstjener.transport.mailbox import (
    CollectResult,
    MailboxCollector,
    Quarantine,
    RefusedMail,
)
from meldingstjener.transport.smtp import EnvironmentGuard, SmtpTransport

log = logging.getLogger(__name__)

FAILED_PREFIX = "mail-failed:"
FAILED_ROUNDS_BEFORE_QUARANTINE = 5


class MailSettingsError(ConfigError):
    """The [smtp] or [mailbox] section cannot be used (a password that cannot be read)."""


def _password(section: str, password_file: Path | None, password_env: str | None) -> str | None:
    if password_file is not None:
        try:
            return password_file.read_text(encoding="utf-8").splitlines()[0]
        except (OSError, IndexError):
            raise MailSettingsError(
                f"{section}.password_file: {password_file} cannot be read or is empty"
            ) from None
    if password_env is not None:
        value = os.environ.get(password_env)
        if value is None:
            raise MailSettingsError(f"{section}.password_env: {password_env} is not set")
        return value
    return None


def _ssl_context(ca_file: Path | None) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)


def build_smtp_transport(
    settings: Settings, *, host: str = "meldingstjener"
) -> SmtpTransport | None:
    """The SMTP transport for ``settings.smtp``, or None when [smtp] has no host."""
    smtp: SmtpSettings = settings.smtp
    if smtp.host is None:
        return None
    assert smtp.edi_address is not None  # the settings validator requires it with a host
    return SmtpTransport(
        host=smtp.host,
        port=smtp.port,
        from_address=smtp.edi_address,
        security=smtp.security,
        username=smtp.username,
        password=_password("smtp", smtp.password_file, smtp.password_env),
        timeout_seconds=smtp.timeout_seconds,
        max_mail_bytes=smtp.max_mail_bytes,
        guard=EnvironmentGuard(settings.environment, smtp.test_domains, smtp.prod_domains),
        ssl_context=_ssl_context(smtp.ca_file),
        message_id_host=host,
        spool_dir=settings.data_dir / "mail-spool",  # on the data disk: /tmp may be in memory
    )


def build_mailbox_collector(settings: Settings) -> MailboxCollector | None:
    """The collector for ``settings.mailbox``, or None when [mailbox] has no host."""
    box: MailboxSettings = settings.mailbox
    if box.host is None:
        return None
    assert box.username is not None  # the settings validator requires it with a host
    return MailboxCollector(
        protocol=box.protocol,
        host=box.host,
        port=box.port,
        security=box.security,
        username=box.username,
        password=_password("mailbox", box.password_file, box.password_env) or "",
        folder=box.folder,
        timeout_seconds=box.timeout_seconds,
        ssl_context=_ssl_context(box.ca_file),
        spool_dir=settings.data_dir / "mail-spool",  # on the data disk: /tmp may be in memory
        max_mail_bytes=box.max_mail_bytes,
    )


# How long before a collection began a try count must have been written last to be dropped
# when its mail was not in that collection: the servers sharing a store write their counts with
# their own clocks, which may disagree by this much (beyond [alerts] clock_skew_seconds).
TRIES_CLOCK_MARGIN = timedelta(minutes=10)


@dataclass
class MailIntake:
    """Turns collected mails into received messages (see the module docstring)."""

    ctx: EngineContext
    quarantine_dir: Path
    # the mails of the last collection that stay in the box round after round, for the
    # mail-stuck alert: what names each, and what the operator should know of it
    stuck: list[str] = field(default_factory=list, init=False)
    _seen: set[str] = field(default_factory=set, init=False, repr=False)

    def collect(self, collector: MailboxCollector) -> CollectResult:
        """One collection of ``collector``'s mailbox through :meth:`on_mail` (and
        :meth:`on_refused`); after one that looked at every mail in the box, the try counts of
        mails no longer there are dropped (:meth:`forget_tries_of_mails_gone`). Raises what
        ``collect_once`` raises."""
        self._seen.clear()
        self.stuck.clear()
        began = utcnow()
        result = collector.collect_once(self.on_mail, self.on_refused)
        handed = (
            result.delivered + result.quarantined + result.kept + result.too_large + result.refused
        )
        if handed >= result.found:
            try:
                self.forget_tries_of_mails_gone(set(self._seen), before=began)
            except Exception as exc:  # housekeeping: the database may be away; next round
                log.warning("could not drop old mail try counts: %s", type(exc).__name__)
        return result

    def forget_tries_of_mails_gone(self, seen: set[str], *, before: datetime) -> int:
        """Drop the try counts of mails that have left the box; return how many.

        A count is kept while its mail stays in the box, and normally ends with it: the mail
        is received or quarantined. It outlives its mail when the mail left another way (a
        person deleted it, another server took it after a try here failed), and nothing else
        would ever remove it. So, after a collection that looked at every mail in the box
        (``seen``: their counts' keys), a count is dropped when its mail was not among them
        and it was last written before the collection began (``before``, less
        ``TRIES_CLOCK_MARGIN``).

        Why that is safe with several servers collecting one box: a mail that was in the box
        when this collection listed it was handed to :meth:`on_mail` here, so it is in
        ``seen``. One that was not had left the box before the listing (its count is stale)
        or came after it. A count another server writes for a mail that came after our
        listing is written after our collection began, so it is not old enough to be dropped;
        and a count dropped all the same (clocks further apart than the margin) costs its mail
        the tries counted so far, no more: the mail stays in the box while it fails, is in our
        next listing, and its count is kept from then on. Its quarantine comes some rounds
        later, never a mail lost or handled twice. A process that dies on a mail never
        completes its collection, so the count that quarantines such a mail is never
        dropped."""
        cutoff = before - TRIES_CLOCK_MARGIN
        with self.ctx.store.unit_of_work() as uow:
            gone = [
                key
                for key in uow.state.keys_unchanged_since(FAILED_PREFIX, cutoff)
                if key not in seen
            ]
            uow.state.delete_many(gone)
            uow.commit()
        if gone:
            log.info("dropped the try counts of %d mail(s) no longer in the mailbox", len(gone))
        return len(gone)

    def on_mail(self, mail: bytes | BinaryIO) -> None:
        """Receive one collected mail: bytes, or a readable, seekable file at its start (the
        collector spools mails to files, so a large one is never held in memory whole)."""
        source: BinaryIO = io.BytesIO(mail) if isinstance(mail, bytes) else mail
        head = source.read(MAX_HEADER_BLOCK + _READ)
        # A mail that fails the same way round after round would block the box for good, so
        # its tries are counted, and after a few it is put aside like an unreadable one. Each
        # try is counted before it starts: a mail that kills the process (out of memory, a
        # crash in native code) ends its tries without a word, and came first again after
        # every restart. Every mail is counted, also one put aside at once: putting it aside
        # may fail too (a full disk), and then it is kept round after round like any other.
        # (If the database is away, the count cannot be written, and the mail simply stays
        # in the box.)
        digest = _sha256(source)  # read once: the try count's key and the quarantine file's name
        tries_key = FAILED_PREFIX + digest[:32]
        self._seen.add(tries_key)
        tries = self._count_try(tries_key)
        try:
            self._take(source, head, digest, tries)
        except _NotPutAside as failed:
            if tries >= FAILED_ROUNDS_BEFORE_QUARANTINE:
                self.stuck.append(self._not_put_aside(source, failed, tries))
            raise

    def _take(self, source: BinaryIO, head: bytes, digest: str, tries: int) -> None:
        """Receive, record or put aside one mail (see :meth:`on_mail`), its try counted."""
        try:
            headers, body_start = split_header_block(head, 0, len(head), "mail")
        except EbxmlError as exc:
            self._quarantine(source, str(exc.code), None, digest)
        content_type = headers.get("Content-Type")
        raw_id = headers.get("Message-ID")
        message_id = bare_content_id(raw_id) if raw_id else None
        # Before the Content-Type is asked for: a bounce may have none (qmail's have no MIME
        # headers at all), and is then text (RFC 2045 5.2), not a mail without a type. Its
        # time grows with the headers' length only, so a long header is no harm here; only a
        # bounce goes on to the email package, which takes minutes over one crafted header,
        # and read_bounce measures its headers first (HeaderTooLong, in _take_bounce). A
        # partner's ebXML mail with one long gateway header is received as any other.
        bounce = is_bounce(headers)
        if not content_type and not bounce:
            self._quarantine(source, "MimeProblem", message_id, digest)
        if tries > FAILED_ROUNDS_BEFORE_QUARANTINE:
            log.error("a mail was tried %d times and never finished; quarantined", tries - 1)
            self._quarantine(source, "Unknown", message_id, digest)
        if bounce:
            self._take_bounce(source, head, message_id, digest)
            return
        with self.ctx.store.payloads.spool() as body:
            try:
                _decode_body(source, body_start, headers.get("Content-Transfer-Encoding"), body)
            except binascii.Error:
                self._quarantine(source, "MimeProblem", message_id, digest)
            try:
                inbound.receive(self.ctx, str(content_type), body, channel="smtp")
            except inbound.InboundRefused as refused:
                self._quarantine(source, refused.code, message_id, digest)
            except inbound.InboundDeferred as deferred:
                self._defer(source, deferred, message_id, digest, tries)
            except Exception as exc:
                # kept in the box and tried again next round (the database may be away)
                if tries >= FAILED_ROUNDS_BEFORE_QUARANTINE:
                    log.error("a mail failed %d times; quarantined\n%s", tries, passed_through(exc))
                    self._quarantine(source, "Unknown", message_id, digest)
                raise
        self._forget_tries(FAILED_PREFIX + digest[:32])

    def in_quarantine(self, path: Path) -> bool:
        """Whether ``path`` is a mail (``*.eml``) directly in the quarantine folder, where
        :meth:`reprocess` takes mails from (a copy elsewhere has no alert or file to end; a
        ``.tmp`` there is a mail being put aside, or one a crash cut short)."""
        resolved = path.resolve()
        return (
            resolved.parent == self.quarantine_dir.resolve()
            and resolved.suffix == ".eml"
            and path.is_file()
        )

    def reprocess(self, path: Path) -> None:
        """Take a quarantined mail (``path``: a file in :attr:`quarantine_dir`) again, by the
        one path a collected mail takes (:meth:`on_mail`): for a mail refused before its
        signature verified (our copy of its sender's signing certificate stale) once the
        register is mended, or any other that may go now. Safe while a server collects: the
        store decides repeats, as when the mailbox hands a mail out twice.

        Taken (received and answered, a repeat answered again, a bounce recorded): its
        ``mail-quarantined`` alert is resolved, and then its file deleted, the mail being in the
        store now (a crash in between leaves the file, and taking it again answers it as a
        repeat). Refused again: :class:`Quarantine` with the code, as on_mail raises it; the
        file was written again under its own name (the mail's hash: the same file, no new
        copy; a file renamed by hand gives way to its copy under that name), its alert counted
        again. Anything else (the database away) raises as on_mail does, the file left where it
        is. Raises ValueError for a file not directly in the quarantine folder."""
        if not self.in_quarantine(path):
            raise ValueError(f"{path} is not a file in the quarantine folder {self.quarantine_dir}")
        with path.open("rb") as mail:
            digest = _sha256(mail)
            mail.seek(0)
            try:
                self.on_mail(mail)
            except Quarantine:
                kept = self.quarantine_dir / f"{digest[:32]}.eml"
                if kept.resolve() != path.resolve() and kept.is_file():
                    path.unlink()
                raise
        with self.ctx.store.unit_of_work() as uow:
            uow.alerts.resolve(f"{AlertKind.MAIL_QUARANTINED}:{digest[:32]}", at=self.ctx.clock())
            uow.commit()
        path.unlink(missing_ok=True)  # another reprocess of it may have been first
        _fsync_folder(self.quarantine_dir)
        log.info("a quarantined mail was taken in and its file %s deleted", path.name)

    def _not_put_aside(self, source: BinaryIO, failed: _NotPutAside, tries: int) -> str:
        """What the mail-stuck alert says of a mail that failed ``tries`` times and could not
        be put aside either."""
        size = source.seek(0, io.SEEK_END)
        message_id = message_id_told(failed.message_id) if failed.message_id else "no Message-Id"
        log.error("a mail failed %d times and cannot be put aside: %s", tries, failed.cause)
        return (
            f"a mail ({size:,} bytes, {message_id}) failed in {FAILED_ROUNDS_BEFORE_QUARANTINE} "
            "collections or more and could "
            f"not be put aside in {self.quarantine_dir} either ({failed.cause}); it is tried "
            "again every round. Check that folder's disk (space, permissions), and the "
            "server's log"
        )

    def on_refused(self, mail: RefusedMail) -> None:
        """A mail the mail server would not hand out: one more try counted (the same count as
        any mail's, keyed by what the server names it with, so that the counts of mails gone
        from the box are dropped the same way); from the fifth on, it is named as stuck. It
        stays in the box, and is tried again next round: the server may mend it."""
        name = f"refused {mail.mailbox} {mail.identity}".encode()
        tries_key = FAILED_PREFIX + hashlib.sha256(name).hexdigest()[:32]
        self._seen.add(tries_key)
        tries = self._count_try(tries_key)
        if tries < FAILED_ROUNDS_BEFORE_QUARANTINE:
            return
        size = f"{mail.size:,} bytes" if mail.size is not None else "size not told"
        message_id = message_id_told(mail.message_id) if mail.message_id else "no Message-Id told"
        said = f"it said [{mail.said}]" if mail.said else "it gave no reason code"
        self.stuck.append(
            f"{mail.number} ({size}, {message_id}): the mail server refused to hand it out in "
            f"{FAILED_ROUNDS_BEFORE_QUARANTINE} collections or more ({said}); it cannot be "
            "quarantined, as it cannot be read. "
            "Ask the mail server's administrator why (the server's log names the fault), and "
            "remove it from the mailbox by hand if it cannot be mended"
        )

    def _take_bounce(
        self, source: BinaryIO, head: bytes, message_id: str | None, digest: str
    ) -> None:
        """A bounce of one of our mails: recorded on its message (event, alert) and its try
        count forgotten in one commit, and then the collector deletes it. One that names
        none of our messages is quarantined, with advice fit for a bounce."""
        try:
            # its headers, its nested parts' too, are measured before the email package reads
            # any: read_bounce raises HeaderTooLong first
            bounce = read_bounce(head)
        except HeaderTooLong as refused:
            self._header_too_long(source, refused.reason, digest, message_id)
        except Exception as exc:  # any bytes a mail server chose: retrying them changes nothing
            log.warning("a bounce could not be read (%s); quarantined", type(exc).__name__)
            bounce = None
        if bounce is not None and record_bounce(
            self.ctx, bounce, forget=FAILED_PREFIX + digest[:32]
        ):
            log.info("a bounce (%s) of our mail was recorded", bounce.codes)
            return
        if bounce is None:
            told = "it could not be read"
        elif bounce.recipients or bounce.returned_to:
            told = f"{bounce.refused_by} refused ({bounce.codes})"
        else:
            told = "it names no address we can read"
        self._quarantine(
            source,
            "Bounce",
            message_id,
            digest,
            advice=(
                f"It is a bounce from a mail server ({told}) that names none of our messages "
                "(no original came back with it, or the one that did is not a message this "
                "server sent). Look at the mail to see which message and which partner's "
                "address it is about, and check that address in the address register or the "
                "agreement; no sender needs to resend it."
            ),
        )

    def _header_too_long(
        self, source: BinaryIO, reason: str, digest: str, message_id: str | None = None
    ) -> NoReturn:
        """Put aside a mail with a header longer than any mail server writes: no further
        reading of it, which could stall the collector for minutes."""
        self._quarantine(
            source,
            "HeaderTooLong",
            message_id,
            digest,
            advice=(
                f"It has {reason}: more than any mail server writes. It was not read "
                "further (reading such headers can take minutes, so it may be meant to stall "
                "this server). Look at it with care; if it was meant for us, ask the sender "
                "to send it again."
            ),
        )

    def _defer(
        self,
        source: BinaryIO,
        deferred: inbound.InboundDeferred,
        message_id: str | None,
        digest: str,
        tries: int,
    ) -> NoReturn:
        """A mail whose sender's certificate cannot be checked now (our revocation check is
        away: a state of ours that passes) stays in the box for the next round, its try not
        counted: an outage longer than five rounds must not put it aside as failed. Once the
        message's own time is up (its TimeToLive) it is put aside, as its sender has given up
        on it; one without a TimeToLive waits as long as the outage (the ``revocation-unknown``
        alert is open meanwhile)."""
        if deferred.until is not None and self.ctx.clock() >= deferred.until:
            self._quarantine(
                source,
                "RevocationUnknown",
                message_id,
                digest,
                advice=(
                    "Its TimeToLive passed while whether its sender's signing certificate is "
                    "revoked could not be found out (see the revocation-unknown alert). Ask "
                    "the sender to send it again once the CA's CRL and OCSP addresses answer."
                ),
            )
        self._uncount_try(FAILED_PREFIX + digest[:32], tries)
        log.warning(
            "a mail stays in the mailbox for the next round: %s%s",
            deferred.detail,
            f" (until its TimeToLive, {deferred.until:%Y-%m-%d %H:%M} UTC)"
            if deferred.until is not None
            else "",
        )
        raise deferred

    def _uncount_try(self, key: str, tries: int) -> None:
        """Take back the try :meth:`on_mail` counted (``tries`` counted with it)."""
        with self.ctx.store.unit_of_work() as uow:
            if tries > 1:
                uow.state.set(key, str(tries - 1))
            else:
                uow.state.delete(key)
            uow.commit()

    def _count_try(self, key: str) -> int:
        """Count one more try of a mail; return how many there have been."""
        with self.ctx.store.unit_of_work() as uow:
            tries = int(uow.state.get(key) or 0) + 1
            uow.state.set(key, str(tries))
            uow.commit()
        return tries

    def _forget_tries(self, key: str) -> None:
        with self.ctx.store.unit_of_work() as uow:
            uow.state.delete(key)
            uow.commit()

    def _quarantine(
        self,
        mail: BinaryIO,
        code: str,
        message_id: str | None,
        digest: str | None = None,
        *,
        advice: str = "Look at it, and ask the sender to resend if it was meant for us.",
    ) -> NoReturn:
        """Store the mail aside durably, alert, and tell the collector (raises Quarantine).
        ``digest``: the mail's SHA-256, when already read; its try count goes with it.
        ``advice``: the alert's last sentences, what the operator should do."""
        digest = digest or _sha256(mail)
        path = self.quarantine_dir / f"{digest[:32]}.eml"
        now = self.ctx.clock()
        summary = (  # its code is read back by _QUARANTINED_CODE
            f"a mail from the mailbox could not be processed ({code}) and was kept aside as "
            f"{path}" + (f" ({message_id_told(message_id)})" if message_id else "") + f". {advice}"
        )
        try:
            _write_durably(path, mail)
            with self.ctx.store.unit_of_work() as uow:
                uow.events.record(
                    None, EventKind.ERROR, actor="smtp", code=code, detail=summary, at=now
                )
                raise_alert(uow, AlertKind.MAIL_QUARANTINED, summary, at=now, key=digest[:32])
                uow.state.delete(FAILED_PREFIX + digest[:32])
                uow.commit()
        except Exception as exc:  # the mail stays in the box; said so, round after round
            raise _NotPutAside(exc, message_id) from exc
        log.warning("quarantined a mail (%s) as %s", code, path.name)
        raise Quarantine(code)


# the code in the summary of a mail-quarantined alert, as MailIntake._quarantine writes it
_QUARANTINED_CODE = re.compile(r"could not be processed \(([^()\s]+)\)")


@dataclass(frozen=True)
class QuarantinedMail:
    """A mail in the quarantine folder: its file, size, when it was put there (the file's
    time), and the code it was put aside with (from its alert; None when none names it)."""

    path: Path
    size: int
    at: datetime
    code: str | None


def quarantined_mails(store: Store, quarantine_dir: Path) -> list[QuarantinedMail]:
    """The mails in ``quarantine_dir``, the oldest first."""
    found = []
    with store.unit_of_work() as uow:
        for path in quarantine_dir.glob("*.eml"):
            try:
                stat = path.stat()
            except FileNotFoundError:  # reprocessed meanwhile
                continue
            alert = uow.alerts.by_key(f"{AlertKind.MAIL_QUARANTINED}:{path.stem}")
            code = _QUARANTINED_CODE.search(alert.summary) if alert is not None else None
            at = datetime.fromtimestamp(stat.st_mtime, tz=UTC)
            found.append(QuarantinedMail(path, stat.st_size, at, code[1] if code else None))
    return sorted(found, key=lambda mail: (mail.at, mail.path.name))


class _NotPutAside(Exception):
    """A mail could not be quarantined (its file or its alert could not be written): it stays
    in the box. ``cause`` says why, in a few words (no path of the mail's own, no content)."""

    def __init__(self, error: Exception, message_id: str | None) -> None:
        why = error.strerror if isinstance(error, OSError) and error.strerror else None
        self.cause = f"{type(error).__name__}: {why}" if why else type(error).__name__
        super().__init__(self.cause)
        self.message_id = message_id


_READ = 1024 * 1024  # bytes per read of a spooled mail


# The host part of a Message-Id an alert names as it is, when of a host name's shape: which
# system made the mail. Its part before the "@" is named by a digest alone: the sender
# chooses it, and a name or a birth date in it (an id of a plain shape may be words too:
# ola.nordmann.diabetes@...) would reach the server log and the webhooks with the alert.
_TOLD_HOST = re.compile(r"[A-Za-z0-9.-]{1,64}")


def message_id_told(message_id: str) -> str:
    """A mail's Message-Id as an alert tells it: the SHA-256 of the whole (the first 16 hex
    digits: enough to find it among the box's mails), and its host when of a host's shape."""
    digest = hashlib.sha256(message_id.encode("utf-8", "backslashreplace")).hexdigest()[:16]
    _, at, host = message_id.rpartition("@")
    if at and _TOLD_HOST.fullmatch(host):
        return f"a Message-Id @{host} of SHA-256 {digest}..."
    return f"a Message-Id of SHA-256 {digest}..."


# A quoted-printable "line" longer than this is decoded in pieces too (the encoding allows 76).
_QP_LONGEST_LINE = 64 * 1024


def _qp_cut(text: bytes) -> int:
    """Where ``text`` can be cut without changing how it decodes (0: nowhere yet). a2b_qp reads
    an "=" with the one or two bytes after it ("=3D", "==", "=" alone), so no "=" may stand in
    the last two bytes before the cut. A text with an "=" in every two bytes is cut at its end
    once it is four times the longest line: such a "line" is not worth holding whole, and may
    then decode otherwise than whole around that cut."""
    cut = len(text)
    while cut > 2 and b"=" in text[cut - 2 : cut]:
        cut -= 1
    if cut > 2:
        return cut
    return len(text) if len(text) > 4 * _QP_LONGEST_LINE else 0


def _pieces(mail: BinaryIO, start: int) -> Iterator[bytes]:
    mail.seek(start)
    while piece := mail.read(_READ):
        yield piece


def _sha256(mail: BinaryIO) -> str:
    digest = hashlib.sha256()
    for piece in _pieces(mail, 0):
        digest.update(piece)
    return digest.hexdigest()


def _decode_body(mail: BinaryIO, start: int, encoding: str | None, target: Spool) -> None:
    """Write the mail body as the HTTP channel would carry it (some gateways base64 the whole)
    into ``target``, a piece at a time."""
    name = (encoding or "7bit").strip().lower()
    if name == "base64":
        decoder = Base64Decoder()
        for piece in _pieces(mail, start):
            target.write(decoder.feed(piece))
        decoder.finish()  # raises binascii.Error where a2b_base64 would
    elif name == "quoted-printable":
        # no encoded sequence crosses a line end (a soft line break ends its line), so whole
        # lines decode alone: a piece at a time, cut after its last line end
        rest = b""
        skipping = False  # a2b_qp drops what follows a soft line break ("=" CR) to the next LF
        for piece in _pieces(mail, start):
            text = rest + piece
            if skipping:
                end = text.find(b"\n")
                rest = b"" if end < 0 else text[end + 1 :]
                skipping = end < 0
                if skipping:
                    continue
                text = rest
            cut = text.rfind(b"\n") + 1
            if not cut and len(text) > _QP_LONGEST_LINE:
                # Not quoted-printable (its lines have 76 characters at most), but decoded as
                # leniently as the whole would be, without holding it all.
                cut = _qp_cut(text)
                if cut:
                    target.write(binascii.a2b_qp(text[:cut]))
                    # did the piece end inside such a break? then so does the line so far
                    skipping = not binascii.a2b_qp(text[:cut] + b"Z").endswith(b"Z")
                    rest = text[cut:]
                    continue
            if cut:
                target.write(binascii.a2b_qp(text[:cut]))
            rest = text[cut:]
        if rest and not skipping:
            target.write(binascii.a2b_qp(rest))
    else:
        for piece in _pieces(mail, start):
            target.write(piece)


def _write_durably(path: Path, mail: BinaryIO) -> None:
    """Write, fsync the file, rename into place, fsync the folder: it survives a crash. The
    file is the server user's alone, as a payload file is (a raw mail holds a message whole)."""
    make_durable_dir(path.parent)
    temporary = path.with_suffix(".tmp")
    temporary.unlink(missing_ok=True)  # one a crash left keeps its mode: made anew
    with open(temporary, "wb", opener=private_file) as handle:
        for piece in _pieces(mail, 0):
            handle.write(piece)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    _fsync_folder(path.parent)


def _fsync_folder(directory: Path) -> None:
    """Make a file's new name, or its removal, in ``directory`` survive a crash."""
    folder = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


class MailCollectorThread(threading.Thread):
    """Collects on an interval, and at once when :meth:`collect_now` asks."""

    def __init__(
        self,
        collector: MailboxCollector,
        intake: MailIntake,
        interval_seconds: float,
        stop: threading.Event,
        instance: str | None = None,
    ) -> None:
        super().__init__(name="mail-collector", daemon=True)
        self.instance = instance or socket.gethostname()  # whose collections fail, in alerts
        self.collector = collector
        self.intake = intake
        self.interval_seconds = interval_seconds
        self.stop_event = stop
        self.last_result: CollectResult | None = None
        self.last_failure: TransportFailure | None = None
        self._wake = threading.Event()
        self._done = threading.Condition()
        self._rounds = 0
        self._collecting = False
        self._failed_rounds = 0  # collections in a row that failed

    def collect_now(self, *, wait: bool = True, timeout: float = 60.0) -> CollectResult | None:
        """Ask for a collection at once. With ``wait``: block until a collection that began
        after this call has finished, and return its result (None on failure or time-out)."""
        with self._done:
            wanted = self._rounds + 2 if self._collecting else self._rounds + 1
            self._wake.set()
            if not wait:
                return None
            if not self._done.wait_for(lambda: self._rounds >= wanted, timeout):
                return None
            return self.last_result

    def run(self) -> None:
        while not self.stop_event.is_set():
            with self._done:
                self._collecting = True
                self._wake.clear()
            self._collect_round()
            with self._done:
                self._collecting = False
                self._rounds += 1
                self._done.notify_all()
            self._pause()

    def _collect_round(self) -> None:
        try:
            self.last_result = self.intake.collect(self.collector)
            stuck: Sequence[str] = list(self.intake.stuck)
            self.last_failure = None
            self._failed_rounds = 0
        except TransportFailure as failure:
            self.last_result = None
            # the mails named before the round ended (the IMAP server ended sessions on too
            # many of them) stay named: a round that ends early must not hide them
            stuck = list(self.intake.stuck)
            self.last_failure = failure
            self._failed_rounds += 1
            log.warning("mail collection failed (%s): %s", failure.code, failure.detail)
        except Exception as exc:
            self.last_result = None
            stuck = list(self.intake.stuck)
            self.last_failure = TransportFailure("unexpected", type(exc).__name__)
            self._failed_rounds += 1
            log.error(
                "mail collection failed unexpectedly (%s); trying again next round\n%s",
                type(exc).__name__,
                passed_through(exc),
            )
        try:
            report_collection(
                self.intake.ctx,
                self.collector,
                self.instance,
                self.last_result,
                self.last_failure,
                self._failed_rounds,
                stuck=stuck,
            )
        except Exception as exc:  # the database may be away too; the next round reports
            log.warning("could not record the mail collection: %s", type(exc).__name__)

    def _pause(self) -> None:
        # Waits in slices so a stop is noticed within a second even with long intervals.
        remaining = self.interval_seconds
        while remaining > 0 and not self.stop_event.is_set():
            step = min(remaining, 1.0)
            if self._wake.wait(step):
                return
            remaining -= step


FAILED_COLLECTIONS_BEFORE_ALERT = 3  # one failure is a blip; three in a row are not

# What to check, by the failure's code ("... check <advice>."). A login refusal is named by the
# server's response code (transport.mailbox.LOGIN_FAILURES): a mailbox held open by another
# program must not send the operator to change a password that is right.
COLLECTION_ADVICE = {
    "mail-spool": "the local disk of the data directory (space, permissions)",
    "mailbox-delete": "that the account may delete mail in the folder",
    "mailbox-auth-failed": "the account and its password ([mailbox] username, password_file)",
    "mailbox-in-use": (
        "which other program holds the mailbox open on this account: another server or a mail "
        "client collecting the same box (the server allows one session at a time). Close it, "
        "or give it an account of its own; the password is right"
    ),
    "mailbox-login-delay": (
        "the poll interval: the mail server allows logins to this account only so often; "
        "raise [mailbox] poll_interval_seconds, or ask the mail server's administrator"
    ),
    "mailbox-unavailable": (
        "the mail server's side: it says it cannot serve the mailbox for now (a fault of its "
        "own, its storage or its account database). It may pass; if it lasts, tell the mail "
        "server's administrator. The password is not the problem"
    ),
    "mailbox-account-blocked": (
        "the account with the mail server's administrator: the server says it must act "
        "before this account can log in"
    ),
    "mailbox-password-expired": (
        "the account's password: the mail server says it has expired; set a new one, and "
        "write it to [mailbox] password_file"
    ),
    "mailbox-tls-required": (
        'the connection: the mail server logs in over TLS only; set [mailbox] security = "tls" '
        'or "starttls"'
    ),
    # the detail names OpenSSL's reason, and for a certificate not accepted why not
    # (transport.base.tls_failure): a self-signed or private CA's certificate, an expired one,
    # a host name the certificate does not name
    "mailbox-tls-failed": (
        "the TLS settings: [mailbox] ca_file must name the CA of the mail server's certificate "
        "when the system does not trust it (a self-signed or private CA), [mailbox] host the "
        'name the certificate is for, and [mailbox] security "tls" (port 993/995) or '
        '"starttls" (143/110) as the port speaks it; an expired certificate is the mail '
        "server administrator's to renew. The password is not the problem"
    ),
    "timeout": (
        "the mail server and the network to it ([mailbox] host, port): it stopped answering "
        "within [mailbox] timeout_seconds (a TLS port also waits so for a [mailbox] security "
        '"starttls" session that never begins its handshake). The password is not the problem'
    ),
    "mailbox-connection-lost": (
        "the mail server and the network to it ([mailbox] host, port, and a firewall between): "
        "the connection could not be made or broke. The password is not the problem"
    ),
}
_DEFAULT_ADVICE = "the mail server, the account and its password"


def report_collection(
    ctx: EngineContext,
    collector: MailboxCollector,
    instance: str,
    result: CollectResult | None,
    failure: TransportFailure | None,
    failed_rounds: int,
    *,
    stuck: Sequence[str] = (),
) -> None:
    """Raise or resolve the mailbox's alerts after a collection.

    ``mailbox-unreachable`` after several failed collections in a row, per collecting instance
    (several servers may collect one box; a broken one is a deviation of its own), resolved by
    its next collection that works. ``mail-too-large`` while mails over the limit sit in the
    box, and ``mail-stuck`` while mails stay in it round after round (``stuck``: what
    :attr:`MailIntake.stuck` says of each, also of a round that failed; resolved only by a
    round that worked), per mailbox account. Each is a state that lasts, found again every
    round: kept (:func:`keep_alert`), told again only when its text changes (another cause,
    other mails), so its text holds no count of rounds."""
    now = ctx.clock()
    where, account = collector.where, collector.username
    with ctx.store.unit_of_work() as uow:
        if result is not None:
            uow.alerts.resolve(f"{AlertKind.MAILBOX_UNREACHABLE}:{instance}", at=now)
        elif failed_rounds >= FAILED_COLLECTIONS_BEFORE_ALERT:
            code = failure.code if failure is not None else "unexpected"
            why = f"{code}: {failure.detail}" if failure is not None else "an error"
            advice = COLLECTION_ADVICE.get(code, _DEFAULT_ADVICE)
            keep_alert(
                uow,
                AlertKind.MAILBOX_UNREACHABLE,
                f"{instance} could not collect the mailbox {where} "
                f"{FAILED_COLLECTIONS_BEFORE_ALERT} times in a row, nor at any collection since "
                f"({why}). Mail from partners does not arrive here while this lasts: check "
                f"{advice}.",
                at=now,
                key=instance,
            )
        if result is not None and result.too_large:
            sizes = ", ".join(
                f"{size:,} bytes" if size is not None else "size not told"
                for size in result.large_sizes[:10]
            )
            keep_alert(
                uow,
                AlertKind.MAIL_TOO_LARGE,
                f"{result.too_large} mail(s) in {where} are larger than the limit "
                f"([mailbox] max_mail_bytes) and were left there, unread ({sizes}). Look at "
                "them in the mailbox, and remove them or raise the limit.",
                at=now,
                key=account,
            )
        elif result is not None:
            uow.alerts.resolve(f"{AlertKind.MAIL_TOO_LARGE}:{account}", at=now)
        if stuck:  # also after a round that failed: what it found stuck is so all the same
            more = f"; and {len(stuck) - 10} more" if len(stuck) > 10 else ""
            keep_alert(
                uow,
                AlertKind.MAIL_STUCK,
                f"{len(stuck)} mail(s) stay in {where} collection after collection: "
                + "; ".join(stuck[:10])
                + f"{more}. The other mails are collected as usual.",
                at=now,
                key=account,
            )
        elif result is not None:
            uow.alerts.resolve(f"{AlertKind.MAIL_STUCK}:{account}", at=now)
        uow.commit()


def start_mail_collector(
    ctx: EngineContext, settings: Settings, stop: threading.Event
) -> MailCollectorThread | None:
    """Start polling our mailbox, or return None when [mailbox] is not configured."""
    collector = build_mailbox_collector(settings)
    if collector is None:
        return None
    intake = MailIntake(ctx, settings.data_dir / "quarantine")
    thread = MailCollectorThread(
        collector,
        intake,
        settings.mailbox.poll_interval_seconds,
        stop,
        instance=settings.server.instance,
    )
    thread.start()
    return thread


__all__ = [
    "MailCollectorThread",
    "MailIntake",
    "MailSettingsError",
    "QuarantinedMail",
    "build_mailbox_collector",
    "build_smtp_transport",
    "quarantined_mails",
    "start_mail_collector",
]
