"""Collecting ebXML mail from our own mailbox, by POP3 or IMAP (TLS, STARTTLS or plain).

One collection (:meth:`MailboxCollector.collect_once`) hands every mail in the box, raw, to a
callback and deletes a mail only after the callback returned: the callback stores the content
durably first. A callback raising :class:`Quarantine` has stored the mail aside itself, so the
mail is deleted too; any other exception leaves the mail in the box for the next collection.

Failing half-way is safe by construction. POP3 deletes only at QUIT (RFC 1939 section 6), so a
connection lost before QUIT deletes nothing and the next collection sees those mails again; the
engine knows them again by their eb:MessageId and answers them as repeats. IMAP marks each
mail \\Deleted and expunges it (UID EXPUNGE when offered) right after the callback; a mail whose
flag never reached the server is simply collected again. Nothing is deleted that was not stored.

POP3 sessions are closed with QUIT every ``batch`` mails, so a drop late in a large collection
does not make the whole box come again. The mails a batch left in the box are passed by in the
later ones, so that the mails behind them are collected in the same round.

A mail the server will not hand out (POP3 ``-ERR`` to RETR, IMAP ``NO`` to FETCH, or an IMAP
server that ends the session with BYE while it is fetched) is that mail's failure, not the
mailbox's: it is reported to ``on_refused`` as a :class:`RefusedMail` (what names it: its
UIDL, or UIDVALIDITY and UID, its size and Message-Id where the server tells them), stays in
the box, and the mails behind it are collected. Failing the round instead kept every mail
behind it in the box for good, and with POP3 undid the deletions of the mails before it.

A mail is handed over as a file, not in memory: an unnamed temporary file in ``spool_dir`` (it
disappears when closed, or with the process). POP3's RETR is written line by line as it arrives
(``poplib.retr`` would gather the whole mail as a list of lines), and IMAP fetches the mail in
pieces of ``FETCH_PIECE`` bytes (partial FETCH, RFC 3501 6.4.5), so a 35 MB mail costs a few
MB of memory to collect, not several times its size.
"""

from __future__ import annotations

import contextlib
import imaplib
import io
import logging
import poplib
import re
import ssl
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

from meldingstjener.transport.base import TransportFailure, tls_failure

log = logging.getLogger(__name__)

Protocol = Literal["pop3", "imap"]
_DEFAULT_PORTS = {
    ("pop3", "tls"): 995,
    ("pop3", "starttls"): 110,
    ("pop3", "none"): 110,
    ("imap", "tls"): 993,
    ("imap", "starttls"): 143,
    ("imap", "none"): 143,
}
FETCH_PIECE = 4 * 1024 * 1024  # bytes of a mail per IMAP FETCH: memory per piece, round trips


class _MailRefused(Exception):
    """The server refused a command about one mail (POP3 ``-ERR``, IMAP ``NO``). The answer was
    complete, so the session is in step and goes on. ``reply``: the server's status line."""

    def __init__(self, reply: bytes) -> None:
        super().__init__(reply)
        self.reply = reply


@dataclass(frozen=True)
class RefusedMail:
    """A mail the server would not hand out. Its content is unknown; what is told of it comes
    from the server. ``identity`` names it across sessions (``uidl:<UIDL>`` for POP3,
    ``uid:<UIDVALIDITY>:<UID>`` for IMAP; where the server has no UIDL, its Message-Id and
    size, or its number and size); ``mailbox`` names the box (``identity`` is unique only in
    it); ``number`` is how the server numbers it now, for people. ``said`` is the response code
    of the refusal (``SYS/TEMP``), ``BYE`` when the server ended the session on it, or None:
    never the server's text."""

    mailbox: str
    identity: str
    number: str
    size: int | None = None
    message_id: str | None = None
    said: str | None = None


class Quarantine(Exception):
    """Raised by the callback: the mail cannot be processed and was stored aside durably (with
    an alert). The collector deletes it from the box; ``reason`` is a short code for the log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class CollectResult:
    """What one collection did. ``kept`` mails stay in the box (the callback failed), and so do
    ``too_large`` ones (over ``max_mail_bytes``: not fetched; their sizes in ``large_sizes``)
    and ``refused`` ones (the server would not hand them out)."""

    found: int = 0
    delivered: int = 0
    quarantined: int = 0
    kept: int = 0
    too_large: int = 0
    refused: int = 0
    large_sizes: list[int | None] = field(default_factory=list)  # None: not told
    problems: list[str] = field(default_factory=list)

    def add(self, other: CollectResult) -> None:
        self.found += other.found
        self.delivered += other.delivered
        self.quarantined += other.quarantined
        self.kept += other.kept
        self.too_large += other.too_large
        self.refused += other.refused
        self.large_sizes += other.large_sizes
        self.problems += other.problems


OnMail = Callable[[BinaryIO], None]
"""Called with each mail as a readable, seekable file at its start; closed after the call."""
OnRefused = Callable[[RefusedMail], None]
"""Called with each mail the server would not hand out (it stays in the box)."""

# Message numbers per UID SEARCH: an answer names at most this many UIDs of at most 10 digits
# and a space each, about 220 kB: well under the 1,000,000 bytes imaplib allows a line.
SEARCH_WINDOW = 20_000

# How often in a row (without a mail fetched between) one IMAP round opens a new session after
# the server ended one with BYE while a mail was fetched. A server that does so more often on
# mails it has not ended a session on before is failing, not refusing a mail or two.
MAX_REOPEN = 3


@dataclass(frozen=True)
class _Batch:
    """What one POP3 batch did: how many mails it looked at and left in the box, and whether
    mails it did not look at are left in its listing (another batch follows)."""

    left: int
    more: bool


@dataclass(frozen=True)
class _Selected:
    """What SELECT told of the folder: how many mails it has, and its UIDVALIDITY (None: not
    told), which the UIDs are valid with."""

    exists: int | None
    uidvalidity: str | None


@dataclass
class MailboxCollector:
    """Collects from one mailbox. ``protocol`` is ``pop3`` or ``imap``."""

    protocol: Protocol
    host: str
    username: str
    password: str = field(repr=False)
    port: int | None = None
    security: str = "tls"
    folder: str = "INBOX"
    timeout_seconds: float = 60.0
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False)
    batch: int = 50
    spool_dir: Path | None = None  # where mails are spooled (default: the system's temp dir)
    max_mail_bytes: int | None = None  # larger mails stay in the box, unfetched
    # IMAP: the mails (UIDs) on which the server ended a session, with the round each was last
    # tried in, under the UIDVALIDITY they were seen with (see _ended_sessions)
    _ended: dict[bytes, int] = field(default_factory=dict, init=False, repr=False)
    _ended_validity: str | None = field(default=None, init=False, repr=False)
    _rounds: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        if (self.protocol, self.security) not in _DEFAULT_PORTS:
            raise ValueError(
                f"protocol must be pop3 or imap and security tls, starttls or none "
                f"(got {self.protocol!r}, {self.security!r})"
            )

    @property
    def where(self) -> str:
        port = self.port or _DEFAULT_PORTS[(self.protocol, self.security)]
        return f"{self.protocol}://{self.host}:{port}"

    @property
    def mailbox(self) -> str:
        """The box and account, as a refused mail's ``mailbox`` names them."""
        return f"{self.where}/{self.folder} {self.username}"

    def collect_once(self, on_mail: OnMail, on_refused: OnRefused | None = None) -> CollectResult:
        """Collect every mail now in the box. Raises :class:`TransportFailure` when the mailbox
        cannot be reached or the connection breaks; what was handled before stays handled.
        A mail the server will not hand out goes to ``on_refused`` and stays in the box."""
        self._prepare_spool()
        try:
            if self.protocol == "pop3":
                return self._collect_pop3(on_mail, on_refused)
            return self._collect_imap(on_mail, on_refused)
        except TransportFailure:
            raise
        except ssl.SSLError as exc:
            raise TransportFailure(
                "mailbox-tls-failed", f"TLS with {self.where} failed: {tls_failure(exc)}"
            ) from None
        except TimeoutError:
            raise TransportFailure("timeout", f"{self.where} stopped answering") from None
        except (OSError, EOFError, poplib.error_proto, imaplib.IMAP4.error) as exc:
            raise TransportFailure(
                "mailbox-connection-lost",
                f"the connection to {self.where} failed: {type(exc).__name__}",
            ) from None

    # --- POP3 ------------------------------------------------------------------------------

    def _pop3_session(self) -> poplib.POP3:
        port = self.port or _DEFAULT_PORTS[("pop3", self.security)]
        context = self.ssl_context or ssl.create_default_context()
        session: poplib.POP3
        if self.security == "tls":
            session = poplib.POP3_SSL(
                self.host, port, timeout=self.timeout_seconds, context=context
            )
        else:
            session = poplib.POP3(self.host, port, timeout=self.timeout_seconds)
            if self.security == "starttls":
                session.stls(context=context)
        try:
            session.user(self.username)
            session.pass_(self.password)
        except poplib.error_proto as refused:
            session.close()
            raise self._login_refused(refused) from None
        return session

    def _collect_pop3(self, on_mail: OnMail, on_refused: OnRefused | None) -> CollectResult:
        result = CollectResult()
        first = True
        # The mails this collection looked at and left in the box (kept, refused, larger than
        # LIST said) head every later listing: the mails before them were deleted at each QUIT,
        # new mail comes after them. Each later batch passes them by, so that the mails behind
        # them are collected too (stopping at them left those for the next round, and one such
        # mail in every round held back all but the first batch for good). Passed by their
        # place, not their UIDL: one listing of UIDLs per batch would double the LISTs' cost,
        # and a mail another collector deleted meanwhile only makes one mail wait a round.
        left = 0
        while True:
            session = self._pop3_session()
            try:
                listing = session.list()[1]
                if first:
                    result.found = len(listing)
                batch = self._pop3_batch(
                    session, listing, on_mail, on_refused, result, first=first, passing=left
                )
                first = False
            except BaseException:
                # No QUIT: the server rolls the session's deletions back (RFC 1939 section 6).
                session.close()
                raise
            session.quit()  # commits the deletions of this batch
            left += batch.left
            if not batch.more:
                return result

    def _pop3_batch(
        self,
        session: poplib.POP3,
        listing: list[bytes],
        on_mail: OnMail,
        on_refused: OnRefused | None,
        result: CollectResult,
        *,
        first: bool,
        passing: int,
    ) -> _Batch:
        """Handle up to ``batch`` mails, after passing by the first ``passing`` that are not
        over the size limit (looked at by an earlier batch, and left). Mails over the size
        limit are passed by (and counted in the ``first`` session only: they are listed again
        in every later one)."""
        looked = left = 0
        for line in listing:
            fields = line.split()
            number, size = int(fields[0]), int(fields[1]) if len(fields) > 1 else 0
            if self._over_limit(size):
                if first:
                    self._leave(result, size)
                continue  # not looked at: it stays first in every LIST and must not use a batch
            if passing:
                passing -= 1
                continue
            if looked >= self.batch:
                return _Batch(left, more=True)
            looked += 1
            with self._spool() as mail:
                try:
                    written = _retr_into(session, number, mail, self.max_mail_bytes)
                except _MailRefused as refusal:
                    # -ERR is a whole answer: the session goes on, and QUIT still deletes
                    # the mails handled before this one
                    refused = self._pop3_refused(session, number, size, refusal)
                    self._refused(result, on_refused, refused)
                    left += 1
                    continue
                if written is None:
                    # larger than LIST said: left
                    self._leave(result, None)
                    left += 1
                    continue
                handed = self._hand_over(on_mail, mail, result)
            if handed:
                session.dele(number)
            else:
                left += 1
        return _Batch(left, more=False)

    def _pop3_refused(
        self, session: poplib.POP3, number: int, size: int, refusal: _MailRefused
    ) -> RefusedMail:
        """What names a mail the server refused to RETR: its UIDL (RFC 1939 section 7) and
        its Message-Id (TOP, which a server that cannot read the mail may refuse too)."""
        try:
            reply = session.uidl(number)
        except poplib.error_proto:
            reply = b""  # UIDL is optional; what is left names it less well
        fields = reply.split() if isinstance(reply, bytes) else []
        uidl = fields[2].decode("ascii", "replace") if len(fields) > 2 else None
        headers = io.BytesIO()
        try:
            _retr_into(session, number, headers, _HEADERS_TOLD, command=f"TOP {number} 0")
            message_id = _message_id(headers.getvalue())
        except _MailRefused:
            message_id = None
        if uidl is not None:
            identity = f"uidl:{uidl}"
        elif message_id is not None:
            identity = f"message-id:{message_id}:{size}"
        else:
            identity = f"number:{number}:{size}"
        return RefusedMail(
            self.mailbox,
            identity,
            f"number {number}",
            size,
            message_id,
            response_code(refusal.reply),
        )

    def _over_limit(self, size: int) -> bool:
        return self.max_mail_bytes is not None and size > self.max_mail_bytes

    def _leave(self, result: CollectResult, size: int | None) -> None:
        """Count a mail left in the box for its size (None: not told, or found while read)."""
        result.too_large += 1
        result.large_sizes.append(size)
        told = f"{size} bytes" if size is not None else "size not told"
        result.problems.append(f"left in the mailbox: {told}, over {self.max_mail_bytes}")

    # --- IMAP ------------------------------------------------------------------------------

    def _imap_session(self) -> tuple[imaplib.IMAP4, _Selected]:
        port = self.port or _DEFAULT_PORTS[("imap", self.security)]
        context = self.ssl_context or ssl.create_default_context()
        session: imaplib.IMAP4
        if self.security == "tls":
            session = imaplib.IMAP4_SSL(
                self.host, port, ssl_context=context, timeout=self.timeout_seconds
            )
        else:
            session = imaplib.IMAP4(self.host, port, timeout=self.timeout_seconds)
            if self.security == "starttls":
                session.starttls(ssl_context=context)
        try:
            session.login(self.username, self.password)
        except imaplib.IMAP4.error as refused:
            session.shutdown()
            raise self._login_refused(refused) from None
        status, data = session.select(_quoted(self.folder))
        if status != "OK":
            session.logout()
            raise TransportFailure(
                "mailbox-folder", f"{self.where} has no folder {self.folder!r}", retryable=False
            )
        exists = data[0] if data else None
        told = session.response("UIDVALIDITY")[1]
        validity = told[-1] if told else None
        return session, _Selected(
            int(exists) if isinstance(exists, bytes) and exists.isdigit() else None,
            validity.decode("ascii", "replace") if isinstance(validity, bytes) else None,
        )

    def _collect_imap(self, on_mail: OnMail, on_refused: OnRefused | None) -> CollectResult:
        result = CollectResult()
        session, selected = self._imap_session()
        refused = 0
        try:
            uidplus = "UIDPLUS" in session.capabilities
            # Every search comes before this round expunges anything: they ask by message
            # numbers, which an expunge shifts. Another collector's expunge may shift them all
            # the same: RFC 3501 7.4.1 forbids EXPUNGE responses during SEARCH, but allows them
            # during UID SEARCH (see _search).
            uids = self._search(session, selected, "UNDELETED")
            leftover = self._search(session, selected, "DELETED", required=False)
            large = (
                self._search(session, selected, "UNDELETED", "LARGER", str(self.max_mail_bytes))
                if self.max_mail_bytes is not None
                else []
            )
            # Mails an earlier round flagged \Deleted and could not expunge (a server that lets
            # the account flag but not expunge) are no longer found below: expunged here, or
            # counted as refused, so that every round fails while they stay and the alert comes.
            refused += self._expunge_leftovers(session, uidplus, leftover)
            result.found = len(uids)
            sizes = self._imap_sizes(session, large)
            ended = self._ended_sessions(selected.uidvalidity, uids)
            # The mails that ended a session in an earlier round are taken last, the one tried
            # longest ago first: unreadable mails are old, and taken oldest first they met
            # every round at its start and ended it before the mails behind them.
            order = [uid for uid in uids if uid not in ended]
            order += sorted(ended, key=lambda uid: (ended[uid], int(uid)))
            self._rounds += 1
            byes = 0  # sessions ended in a row, without a mail answered between
            for at, uid in enumerate(order):
                if uid in sizes:  # SEARCH LARGER found it
                    self._leave(result, sizes[uid])
                    continue
                try:
                    handed = self._imap_take(session, selected, uid, on_mail, on_refused, result)
                except imaplib.IMAP4.abort:
                    # A server that ends the session while it hands out one mail (Dovecot
                    # does so when it cannot read the mail's file) would end every round
                    # there. It is that mail's failure: a new session goes on with the next.
                    if not _said_bye(session):
                        raise
                    ended[uid] = self._rounds
                    byes += 1
                    self._refused(result, on_refused, self._imap_refusal(selected, uid, "BYE"))
                    rest = order[at + 1 :]
                    if byes > MAX_REOPEN:
                        # the rest that ended a session before are reported as such, untried
                        # (counted, and named in mail-stuck, however the round ends)
                        for left in rest:
                            if left in sizes:
                                self._leave(result, sizes[left])
                            elif left in ended:
                                said = self._imap_refusal(selected, left, "BYE")
                                self._refused(result, on_refused, said)
                        if any(left not in ended and left not in sizes for left in rest):
                            # mails never tried end sessions too: the server is failing
                            raise
                    with contextlib.suppress(OSError):  # the server has closed it
                        session.shutdown()
                    session, now_selected = self._imap_session()
                    if now_selected.uidvalidity != selected.uidvalidity:
                        raise TransportFailure(
                            "mailbox-protocol",
                            f"{self.where} changed the folder's UIDVALIDITY during a collection",
                        ) from None
                    if byes > MAX_REOPEN:
                        break  # only mails that ended sessions before are left: tried later
                    continue
                # answered (handed out, refused with NO, gone): the server serves, and this
                # mail no longer ends its sessions
                byes = 0
                ended.pop(uid, None)
                if handed:
                    refused += not _deleted(session, uid.decode("ascii"), uidplus)
            if not uidplus:
                status, _ = session.expunge()
                refused += status != "OK"
            if refused:
                # imaplib raises on BAD only; a NO left each mail in the box, collected (and
                # answered with its Acknowledgment) again at every poll, with nothing to show.
                # The round fails after the rest of the box was taken: the alert follows.
                raise TransportFailure(
                    "mailbox-delete",
                    f"{self.where} refused to delete {refused} collected mail(s) (their content "
                    "is stored; they are collected again until deleted)",
                )
        except BaseException:
            with contextlib.suppress(OSError):  # it may be closed already (a reopen failed)
                session.shutdown()
            raise
        session.close()
        session.logout()
        return result

    def _ended_sessions(self, uidvalidity: str | None, uids: list[bytes]) -> dict[bytes, int]:
        """The mails (by UID) on which the server ended a session in an earlier round, with the
        round each was last tried in: only those still in the box (``uids``), and none when
        the folder's UIDVALIDITY changed (its UIDs name other mails then). Kept in memory: a
        restart forgets them, and the first round after it finds them again."""
        if uidvalidity is None or uidvalidity != self._ended_validity:
            self._ended_validity = uidvalidity
            self._ended.clear()
        present = set(uids)
        for uid in [uid for uid in self._ended if uid not in present]:
            del self._ended[uid]
        return self._ended

    def _imap_refusal(
        self,
        selected: _Selected,
        uid: bytes,
        said: str | None,
        size: int | None = None,
        message_id: str | None = None,
    ) -> RefusedMail:
        """A mail the IMAP server would not hand out, named by UIDVALIDITY and UID."""
        uid_text = uid.decode("ascii")
        return RefusedMail(
            self.mailbox,
            f"uid:{selected.uidvalidity or '?'}:{uid_text}",
            f"UID {uid_text}",
            size,
            message_id,
            said,
        )

    def _imap_take(
        self,
        session: imaplib.IMAP4,
        selected: _Selected,
        uid: bytes,
        on_mail: OnMail,
        on_refused: OnRefused | None,
        result: CollectResult,
    ) -> bool:
        """Fetch one mail and hand it over; return whether it may be deleted."""
        uid_text = uid.decode("ascii")
        with self._spool() as mail:
            try:
                fetched = _fetch_into(session, uid_text, mail, self.max_mail_bytes)
            except _MailRefused as refusal:
                size, message_id = _imap_told(session, uid_text)
                said = response_code(refusal.reply)
                refused = self._imap_refusal(selected, uid, said, size, message_id)
                self._refused(result, on_refused, refused)
                return False
            if fetched == "gone":
                return False  # expunged meanwhile by another collector
            if fetched == "too-large":  # larger than its size said
                self._leave(result, None)
                return False
            return self._hand_over(on_mail, mail, result)

    def _search(
        self, session: imaplib.IMAP4, selected: _Selected, *criteria: str, required: bool = True
    ) -> list[bytes]:
        """The UIDs of the mails that match ``criteria``, oldest first (a mail's UID is larger
        than any before it). Asked for ``SEARCH_WINDOW`` message numbers at a time: the answer
        is one line, and imaplib refuses a line over 1,000,000 bytes, so one search of a box
        of some 100,000 mails failed every round, and the box could never be collected again.
        A refused search fails the round, or finds nothing when not ``required``."""
        exists = selected.exists
        if exists is None:  # not told: the whole folder at once, as before
            windows: list[tuple[str, ...]] = [()]
        else:
            # The last window is open-ended: another collector may expunge mail after our
            # SELECT, and RFC 3501 7.4.1 lets a server tell of it (and renumber) during a UID
            # command, so a closed last window could name numbers that no longer exist, which
            # a server answers BAD. A mail that moves into a window already searched waits
            # for the next round.
            windows = [
                (f"{low}:{low + SEARCH_WINDOW - 1}",)
                if low + SEARCH_WINDOW <= exists
                else (f"{low}:*",)
                for low in range(1, exists + 1, SEARCH_WINDOW)
            ]
        found: list[bytes] = []
        for window in windows:
            status, data = session.uid("SEARCH", *window, *criteria)
            if status != "OK":
                if not required:
                    return []
                raise TransportFailure(
                    "mailbox-search", f"{self.where} refused SEARCH {' '.join(criteria)}"
                )
            found += data[0].split() if data and data[0] else []
        return sorted(found, key=int)

    def _expunge_leftovers(
        self, session: imaplib.IMAP4, uidplus: bool, leftover: list[bytes]
    ) -> int:
        """Expunge the mails flagged \\Deleted that are still in the box (``leftover``); return
        how many the server refused to expunge. In pieces of 100 UIDs (a command line thousands
        long is one a server may answer BAD), and a BAD counts as a refusal: the new mail is
        still taken."""
        if not leftover:
            return 0
        pieces = [leftover[at : at + 100] for at in range(0, len(leftover), 100)]
        refused = 0
        for piece in pieces if uidplus else [leftover]:
            try:
                if uidplus:
                    status, _ = session.uid("EXPUNGE", b",".join(piece).decode("ascii"))
                else:
                    status, _ = session.expunge()
            except imaplib.IMAP4.error:
                status = "BAD"
            refused += len(piece) if status != "OK" else 0
        return refused

    def _imap_sizes(self, session: imaplib.IMAP4, large: list[bytes]) -> dict[bytes, int | None]:
        """The size of each undeleted mail larger than ``max_mail_bytes`` (``large``: what
        SEARCH LARGER found; RFC822.SIZE of just those), by UID."""
        if not large:
            return {}
        status, data = session.uid("FETCH", b",".join(large).decode(), "(UID RFC822.SIZE)")
        told: dict[bytes, int] = {}
        for item in data if status == "OK" else []:
            uid = _UID.search(item) if isinstance(item, bytes) else None
            size = _SIZE.search(item) if isinstance(item, bytes) else None
            if uid is not None and size is not None:
                told[uid.group(1)] = int(size.group(1))
        # one whose size was not told is over the limit all the same: SEARCH said so
        return {uid: told.get(uid) for uid in large}

    # --- both ------------------------------------------------------------------------------

    def _login_refused(self, refused: Exception) -> TransportFailure:
        """The failure for a refused login, named by the server's response code (the code
        only: the text after it is the server's own and is not repeated)."""
        reply = refused.args[0] if refused.args else b""
        code = response_code(reply)
        failure = login_failure(code)
        told = f" [{code}]" if code else ""
        return TransportFailure(failure, f"{self.where} refused the login of {self.username}{told}")

    def _prepare_spool(self) -> None:
        if self.spool_dir is None:
            return
        try:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _spool_failure(exc) from None

    def _spool(self) -> BinaryIO:
        try:
            return tempfile.TemporaryFile(dir=self.spool_dir)  # the caller closes it
        except OSError as exc:
            raise _spool_failure(exc) from None

    def _refused(
        self, result: CollectResult, on_refused: OnRefused | None, refused: RefusedMail
    ) -> None:
        """Count a mail the server would not hand out, and report it."""
        result.refused += 1
        told = f" [{refused.said}]" if refused.said else ""
        result.problems.append(f"refused by the server: {refused.number}{told}")
        log.warning("%s would not hand out its mail %s%s", self.where, refused.number, told)
        if on_refused is None:
            return
        try:
            on_refused(refused)
        except Exception as exc:  # counting it may fail (the database away): it is still left
            log.warning("a refused mail could not be counted: %s", type(exc).__name__)

    def _hand_over(self, on_mail: OnMail, mail: BinaryIO, result: CollectResult) -> bool:
        """Give one mail to the callback; return whether it may be deleted."""
        mail.seek(0)
        try:
            on_mail(mail)
        except Quarantine as quarantined:
            result.quarantined += 1
            result.problems.append(f"quarantined: {quarantined.reason}")
            return True
        except Exception as exc:  # any failure keeps the mail; the next collection retries
            result.kept += 1
            result.problems.append(f"kept in the mailbox: {type(exc).__name__}")
            log.warning("a mail stays in %s: %s", self.where, type(exc).__name__)
            return False
        result.delivered += 1
        return True


# Why a server refused a login, from the response code in its refusal: POP3's (RFC 2449
# section 8, RFC 3206) and IMAP's (RFC 5530). One table for both protocols, so that the alert's
# advice depends on what the server said and not on how it was asked. A refusal without a code,
# or with one not listed here, is taken for what servers mean by it most often: the credentials.
LOGIN_FAILURES = {
    # the account and its password (POP3 AUTH; IMAP AUTHENTICATIONFAILED, AUTHORIZATIONFAILED)
    "AUTH": "mailbox-auth-failed",
    "AUTHENTICATIONFAILED": "mailbox-auth-failed",
    "AUTHORIZATIONFAILED": "mailbox-auth-failed",
    # another session holds the mailbox (POP3 IN-USE, IMAP INUSE)
    "IN-USE": "mailbox-in-use",
    "INUSE": "mailbox-in-use",
    # the server allows logins only so often (POP3 LOGIN-DELAY)
    "LOGIN-DELAY": "mailbox-login-delay",
    # a passing fault on the server's side (POP3 SYS/TEMP, IMAP UNAVAILABLE)
    "SYS/TEMP": "mailbox-unavailable",
    "UNAVAILABLE": "mailbox-unavailable",
    # the server's administrator must act (POP3 SYS/PERM, IMAP CONTACTADMIN)
    "SYS/PERM": "mailbox-account-blocked",
    "CONTACTADMIN": "mailbox-account-blocked",
    # the password was right once and is no more (IMAP EXPIRED)
    "EXPIRED": "mailbox-password-expired",
    # the server wants the login protected by TLS (IMAP PRIVACYREQUIRED)
    "PRIVACYREQUIRED": "mailbox-tls-required",
}
_RESPONSE_CODE = re.compile(r"^(?:-ERR\s+)?\[([A-Za-z0-9/-]{1,40})[\] ]")


def response_code(reply: bytes | str) -> str | None:
    """The response code a refusal opens with (``-ERR [IN-USE] ...`` in POP3, ``[INUSE] ...``
    after IMAP's NO), upper case; None when there is none. A hierarchical POP3 code is kept
    whole (``SYS/TEMP``)."""
    text = reply.decode("ascii", "replace") if isinstance(reply, bytes) else str(reply)
    found = _RESPONSE_CODE.match(text.strip())
    return found.group(1).upper() if found else None


def login_failure(code: str | None) -> str:
    """The failure code (``mailbox-...``) for a login refused with the response ``code``."""
    return LOGIN_FAILURES.get(code or "", "mailbox-auth-failed")


def _deleted(session: imaplib.IMAP4, uid: str, uidplus: bool) -> bool:
    """Flag one stored mail \\Deleted and expunge it (UIDPLUS) or leave that to the round's
    EXPUNGE. False when the server refused: NO comes back as a status, BAD raises."""
    try:
        status, _ = session.uid("STORE", uid, "+FLAGS.SILENT", r"(\Deleted)")
        if status == "OK" and uidplus:
            status, _ = session.uid("EXPUNGE", uid)
    except imaplib.IMAP4.error:
        return False
    return status == "OK"


def _quoted(folder: str) -> str:
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _spool_failure(exc: OSError) -> TransportFailure:
    """A local disk problem, not the mailbox's: said so, so that nobody looks at the network."""
    return TransportFailure(
        "mail-spool", f"a collected mail cannot be written to disk: {exc.strerror or exc}"
    )


def _spool_write(target: BinaryIO, data: bytes) -> None:
    try:
        target.write(data)
    except OSError as exc:
        raise _spool_failure(exc) from None


_POP3_PIECE = 64 * 1024  # bytes read at most at once from a POP3 line; lines may be longer
_POP3_STATUS_LINE = 512  # a status line's longest, CRLF included (RFC 1939 section 3)


def _retr_into(
    session: poplib.POP3,
    number: int,
    target: BinaryIO,
    limit: int | None = None,
    *,
    command: str | None = None,
) -> int | None:
    """RETR one mail into ``target`` as it arrives (multi-line response, RFC 1939 section 3: a
    lone "." ends it, a leading "." is doubled), each line ending in CRLF as ``poplib.retr``
    gave them; return how many bytes were written. Its own line reader is not used: it refuses
    lines over 2048 bytes, and one such line (an ebXML envelope on one line) would block the
    mailbox for good. A mail that grows past ``limit`` is read to its end (the session must go
    on) but no more is written: None. The size in LIST is the server's word, not a bound.
    A whole ``-ERR`` line is :class:`_MailRefused` (the session is in step); anything else
    that is not ``+OK`` is ``poplib.error_proto``. ``command``: another multi-line command
    about the mail (``TOP n 0``), read the same way."""
    # poplib has no call that sends a command and leaves the answer to be read: the command
    # goes on the session's socket and its status line is read from its file, as poplib does
    session.sock.sendall(f"{command or f'RETR {number}'}\r\n".encode("ascii"))
    status = _pop3_read(session)
    while not status.endswith(b"\n") and len(status) <= _POP3_STATUS_LINE:
        status += _pop3_read(session)
    if status.startswith(b"-ERR") and status.endswith(b"\n"):
        raise _MailRefused(status.rstrip(b"\r\n"))
    if not status.startswith(b"+OK") or not status.endswith(b"\n"):
        raise poplib.error_proto(status[:_POP3_STATUS_LINE].rstrip(b"\r\n"))
    at_line_start = True
    held_cr = b""  # a CR at the end of a piece may be the first half of the line's CRLF
    written = 0
    while True:
        piece = _pop3_read(session)
        if at_line_start:
            while len(piece) < 3 and not piece.endswith(b"\n"):  # enough to see a dot line
                piece += _pop3_read(session)
            if piece in (b".\r\n", b".\n"):
                return written if limit is None or written <= limit else None
            if piece.startswith(b".."):
                piece = piece[1:]
        data = held_cr + piece
        if data.endswith(b"\n"):
            out = (data[:-2] if data.endswith(b"\r\n") else data[:-1]) + b"\r\n"
            held_cr, at_line_start = b"", True
        else:
            held_cr = b"\r" if data.endswith(b"\r") else b""
            out = data[: len(data) - len(held_cr)]
            at_line_start = False
        if limit is None or written + len(out) <= limit:
            _spool_write(target, out)
        written += len(out)


def _pop3_read(session: poplib.POP3) -> bytes:
    piece = session.file.readline(_POP3_PIECE)
    if not piece:
        raise poplib.error_proto("-ERR EOF")
    return piece


Fetched = Literal["whole", "gone", "too-large"]


def _fetch_into(
    session: imaplib.IMAP4, uid: str, target: BinaryIO, limit: int | None = None
) -> Fetched:
    """Fetch one mail into ``target`` piece by piece: ``whole``, ``gone`` (expunged), or
    ``too-large`` when it grows past ``limit`` (fetching stops there: the size the server
    gave is its word, not a bound)."""
    offset = 0
    while True:
        if limit is not None and offset > limit:
            return "too-large"
        status, data = session.uid("FETCH", uid, f"(UID BODY.PEEK[]<{offset}.{FETCH_PIECE}>)")
        if status != "OK":  # NO (imaplib raises on BAD): the server cannot hand this one out
            said = data[-1] if data and isinstance(data[-1], bytes) else b""
            raise _MailRefused(said)
        piece = fetched_piece(data, offset)
        if piece is None:
            if offset == 0:
                return "gone"  # expunged by another collector
            raise TransportFailure(
                "mailbox-protocol", "a mail went away while it was being fetched; it stays"
            )
        if len(piece) > FETCH_PIECE:
            raise TransportFailure(
                "mailbox-protocol", "the IMAP server sent more of a mail than was asked for"
            )
        _spool_write(target, piece)
        offset += len(piece)
        if len(piece) < FETCH_PIECE:
            return "too-large" if limit is not None and offset > limit else "whole"


def _said_bye(session: imaplib.IMAP4) -> bool:
    """Whether the server ended the session with BYE (imaplib then raises ``abort``, as it
    does for a connection that breaks; only the BYE kept among the untagged answers tells)."""
    return bool(session.untagged_responses.get("BYE"))


def _imap_told(session: imaplib.IMAP4, uid: str) -> tuple[int | None, str | None]:
    """The size and Message-Id of a mail the server refused to FETCH, if it tells them (it may
    refuse these too: then None)."""
    fields = "(UID RFC822.SIZE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])"
    try:
        status, data = session.uid("FETCH", uid, fields)
    except imaplib.IMAP4.abort:
        raise  # the session is gone: the caller knows what to do
    except imaplib.IMAP4.error:  # BAD: a server that does not know these items
        return None, None
    size = message_id = None
    for item in data if status == "OK" else []:
        head, literal = item if isinstance(item, tuple) else (item, b"")
        if not isinstance(head, bytes):
            continue
        found = _SIZE.search(head)
        size = int(found.group(1)) if found is not None else size
        if isinstance(literal, bytes):
            message_id = _message_id(literal) or message_id
    return size, message_id


_HEADERS_TOLD = 64 * 1024  # the most of a refused mail's headers read to find its Message-Id
_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(<[!-~]{1,200}>)[ \t]*\r?$", re.I | re.M)


def _message_id(headers: bytes) -> str | None:
    """The Message-Id among ``headers`` (one printable token in ``<>``), or None."""
    found = _MESSAGE_ID.search(headers.split(b"\r\n\r\n", 1)[0])
    return found.group(1).decode("ascii") if found is not None else None


_UID = re.compile(rb"\bUID (\d+)")
_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)")
_BODY_ITEM = re.compile(rb'BODY\[\]<(\d+)>\s*(?:\{\d+\}$|NIL|"((?:[^"\\]|\\.)*)")?', re.DOTALL)


def fetched_piece(data: list[Any], offset: int) -> bytes | None:
    """The part of the mail in a partial FETCH answer (RFC 3501 7.4.2: ``BODY[]<origin>``
    followed by a literal, a quoted string or NIL); None when the message is gone (no body
    item, or NIL for the first piece). An empty literal or string is an empty piece. An origin
    other than ``offset`` (a server that ignored the range) is a protocol failure: appending
    it would corrupt the mail."""
    for item in data:
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], bytes):
            found = _BODY_ITEM.search(item[0])
            if found is not None and isinstance(item[1], bytes):
                _check_origin(found, offset)
                return item[1]
        elif isinstance(item, bytes):
            found = _BODY_ITEM.search(item)
            if found is not None:
                _check_origin(found, offset)
                if found.group(0).endswith(b"NIL"):
                    # past the end; at the start, an expunged message (RFC 2180 4.1.3)
                    return None if offset == 0 else b""
                quoted = found.group(2)
                # "" past the end (or an empty mail); a short last piece may come quoted
                return re.sub(rb"\\(.)", rb"\1", quoted) if quoted else b""
    return None


def _check_origin(found: re.Match[bytes], offset: int) -> None:
    if int(found.group(1)) != offset:
        raise TransportFailure(
            "mailbox-protocol",
            f"the IMAP server answered from byte {int(found.group(1))}, not {offset}",
        )


__all__ = [
    "LOGIN_FAILURES",
    "CollectResult",
    "MailboxCollector",
    "OnMail",
    "OnRefused",
    "Quarantine",
    "RefusedMail",
    "fetched_piece",
    "login_failure",
    "response_code",
]
