"""Reading a mail in pieces: IMAP partial FETCH answers, and the intake's body decoding from a
spooled file, against the whole-text results they must equal."""

from __future__ import annotations

import base64
import binascii
import imaplib
import io
import poplib
import random
from typing import Any

import pytest

from meldingstjener.engine import mail_channel
from meldingstjener.transport import mailbox
from meldingstjener.transport.base import TransportFailure
from meldingstjener.transport.mailbox import fetched_piece


def test_a_partial_fetch_answer_gives_its_piece() -> None:
    assert fetched_piece([(b"1 (UID 5 BODY[]<0> {5}", b"hello"), b")"], 0) == b"hello"
    with_flags = [(b"1 (FLAGS (\\Seen) UID 5 BODY[]<8> {2}", b"lo"), b")"]
    assert fetched_piece(with_flags, 8) == b"lo"
    # past the end: NIL or an empty string; a short last piece may come quoted
    assert fetched_piece([b"1 (UID 5 BODY[]<10> NIL)"], 10) == b""
    assert fetched_piece([b'1 (UID 5 BODY[]<10> "")'], 10) == b""
    assert fetched_piece([b'1 (UID 5 BODY[]<10> "a\\"b\\\\c")'], 10) == b'a"b\\c'
    # no body item, or NIL for the first piece (RFC 2180 4.1.3): the message is gone
    assert fetched_piece([b"1 (FLAGS (\\Seen))"], 0) is None
    assert fetched_piece([None], 0) is None
    assert fetched_piece([b"1 (UID 5 BODY[]<0> NIL)"], 0) is None
    # an empty mail is an empty piece: handed over (and quarantined), not skipped for ever
    assert fetched_piece([(b"1 (UID 5 BODY[]<0> {0}", b""), b")"], 0) == b""


def test_a_piece_from_another_place_is_refused() -> None:
    with pytest.raises(TransportFailure) as caught:
        fetched_piece([(b"1 (UID 5 BODY[]<0> {5}", b"hello")], 4)
    assert caught.value.code == "mailbox-protocol"


class ScriptedImap:
    """Answers UID FETCH from a list of (status, data); records the ranges asked for."""

    def __init__(self, answers: list[tuple[str, list[Any]]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    def uid(self, command: str, uid: str, what: str) -> tuple[str, list[Any]]:
        self.asked.append(what)
        return self.answers.pop(0)


def literal(offset: int, data: bytes) -> tuple[str, list[Any]]:
    return "OK", [(f"1 (UID 7 BODY[]<{offset}> {{{len(data)}}}".encode(), data), b")"]


def fetch(
    answers: list[tuple[str, list[Any]]], monkeypatch: pytest.MonkeyPatch, limit: int | None = None
) -> tuple[str, bytes, list[str]]:
    monkeypatch.setattr(mailbox, "FETCH_PIECE", 4)
    session = ScriptedImap(answers)
    target = io.BytesIO()
    outcome = mailbox._fetch_into(session, "7", target, limit)  # type: ignore[arg-type]
    return outcome, target.getvalue(), session.asked


def test_pieces_are_asked_for_in_order_until_a_short_one(monkeypatch: pytest.MonkeyPatch) -> None:
    whole, data, asked = fetch(
        [literal(0, b"abcd"), literal(4, b"efgh"), literal(8, b"ij")], monkeypatch
    )
    assert (whole, data) == ("whole", b"abcdefghij")
    assert asked == [f"(UID BODY.PEEK[]<{n}.4>)" for n in (0, 4, 8)]
    # a mail of exactly two pieces ends with an empty answer
    whole, data, _ = fetch(
        [literal(0, b"abcd"), literal(4, b"efgh"), ("OK", [b"1 (UID 7 BODY[]<8> NIL)"])],
        monkeypatch,
    )
    assert (whole, data) == ("whole", b"abcdefgh")


def test_a_mail_gone_before_or_while_it_is_fetched(monkeypatch: pytest.MonkeyPatch) -> None:
    assert fetch([("OK", [None])], monkeypatch)[0] == "gone"  # expunged before: skipped
    # a server answering NIL for an expunged message (RFC 2180 4.1.3): skipped, not empty
    assert fetch([("OK", [b"1 (UID 7 BODY[]<0> NIL)"])], monkeypatch)[0] == "gone"
    with pytest.raises(TransportFailure) as caught:  # expunged half-way: not handed over cut
        fetch([literal(0, b"abcd"), ("OK", [None])], monkeypatch)
    assert caught.value.code == "mailbox-protocol"
    with pytest.raises(TransportFailure):  # more than was asked for
        fetch([literal(0, b"abcdefgh")], monkeypatch)


class Spooled(io.BytesIO):
    """Stands in for the payload spool the intake decodes into."""


@pytest.mark.parametrize("piece", [1, 3, 7, 64])
def test_the_body_decodes_in_pieces_as_it_would_whole(
    piece: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mail_channel, "_READ", piece)
    chance = random.Random(piece)
    payload = bytes(chance.randrange(256) for _ in range(600))
    encoded = {
        "base64": base64.encodebytes(payload).replace(b"\n", b"\r\n") + b"trailing junk",
        "quoted-printable": binascii.b2a_qp(payload)
        + b"soft=\r\nbreak =3D end=\r\nno final line end",
    }
    expected = {
        "base64": binascii.a2b_base64(encoded["base64"]),
        "quoted-printable": binascii.a2b_qp(encoded["quoted-printable"]),
    }
    for name, body in encoded.items():
        mail = io.BytesIO(b"Header: x\r\n\r\n" + body)
        target = Spooled()
        mail_channel._decode_body(mail, 13, name, target)  # type: ignore[arg-type]
        assert target.getvalue() == expected[name], name
    with pytest.raises(binascii.Error):
        mail_channel._decode_body(io.BytesIO(b"QUJDR"), 0, "base64", Spooled())  # type: ignore[arg-type]


@pytest.mark.parametrize("piece", [1, 2, 3, 7, 64])
def test_a_quoted_printable_body_without_line_ends_is_decoded_in_pieces(
    piece: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mail_channel, "_READ", piece)
    monkeypatch.setattr(mail_channel, "_QP_LONGEST_LINE", 10)
    chance = random.Random(piece)
    # escapes and soft breaks everywhere, and never a line end: one "line" of 3,000 bytes
    body = b"".join(
        chance.choice([b"=3D", b"=41", b"x", b"==", b"  ", b"=", b"=4", b"_", b"= "])
        for _ in range(1000)
    )
    writes: list[int] = []

    class Counted(Spooled):
        def write(self, data: bytes) -> int:  # type: ignore[override]
            writes.append(len(data))
            return super().write(data)

    target = Counted()
    mail_channel._decode_body(io.BytesIO(body), 0, "quoted-printable", target)  # type: ignore[arg-type]
    assert target.getvalue() == binascii.a2b_qp(body)
    assert len(writes) > 10 and max(writes) <= 4 * 10 + piece  # never the whole body at once
    # A soft line break with a CR but no LF: a2b_qp drops what follows it up to the next LF,
    # however far, and so must the pieces (the LF comes thousands of bytes and pieces later).
    for skipped in (body[:500] + b"=\r" + body[500:] + b"\r\nafter", body + b"=\r" + body):
        target = Counted()
        mail_channel._decode_body(io.BytesIO(skipped), 0, "quoted-printable", target)  # type: ignore[arg-type]
        assert target.getvalue() == binascii.a2b_qp(skipped)


class Pop3Wire:
    """Stands in for a POP3 session: the server's bytes for one RETR, read in odd pieces."""

    def __init__(self, wire: bytes, pieces: random.Random, status: bytes = b"+OK\r\n") -> None:
        self._wire = b""
        self._answer = status + wire
        self._pieces = pieces
        self.sock = self
        self.file = self

    def sendall(self, command: bytes) -> None:
        assert command == b"RETR 1\r\n"
        self._wire = self._answer

    def readline(self, limit: int) -> bytes:
        size = min(limit, self._pieces.randint(1, 5))
        end = self._wire.find(b"\n", 0, size)
        cut = end + 1 if end >= 0 else size
        piece, self._wire = self._wire[:cut], self._wire[cut:]
        return piece


def test_a_pop3_mail_comes_out_as_sent_however_its_lines_arrive() -> None:
    chance = random.Random(5)
    alphabet = [b"a", b".", b"\r", b"x", b" "]
    for _ in range(2000):
        lines = [
            b"".join(chance.choice(alphabet) for _ in range(chance.randint(0, 6)))
            for _ in range(chance.randint(0, 5))
        ]
        mail = b"".join(line + b"\r\n" for line in lines)
        stuffed = b"".join(
            (b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines
        )
        target = io.BytesIO()
        wire = Pop3Wire(stuffed + b".\r\n", chance)
        mailbox._retr_into(wire, 1, target)  # type: ignore[arg-type]
        assert target.getvalue() == mail, lines


def test_a_refused_retr_is_that_mails_refusal_with_the_servers_words() -> None:
    # a whole -ERR line: the session is in step, and only this mail is refused
    wire = Pop3Wire(b"", random.Random(2), status=b"-ERR [SYS/TEMP] no such message\r\n")
    with pytest.raises(mailbox._MailRefused) as refused:
        mailbox._retr_into(wire, 1, io.BytesIO())  # type: ignore[arg-type]
    assert refused.value.reply == b"-ERR [SYS/TEMP] no such message"
    assert mailbox.response_code(refused.value.reply) == "SYS/TEMP"
    # a status line longer than POP3 allows is refused, not read on as the mail
    wire = Pop3Wire(b"line\r\n.\r\n", random.Random(3), status=b"+OK " + b"x" * 600 + b"\r\n")
    with pytest.raises(poplib.error_proto):
        mailbox._retr_into(wire, 1, io.BytesIO())  # type: ignore[arg-type]


def test_a_mail_larger_than_its_size_said_is_cut_off_at_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # IMAP: fetching stops once past the limit (a piece beyond it at most is written)
    answers = [literal(0, b"abcd"), literal(4, b"efgh"), literal(8, b"ij")]
    outcome, data, asked = fetch(answers, monkeypatch, limit=6)
    assert (outcome, data, len(asked)) == ("too-large", b"abcdefgh", 2)
    assert fetch([literal(0, b"abcd"), literal(4, b"ef")], monkeypatch, limit=6)[0] == "whole"
    # POP3: the response is read to its end (the session goes on), nothing past the limit kept
    wire = Pop3Wire(b"0123456789\r\n" * 5 + b".\r\n", random.Random(1))
    target = io.BytesIO()
    assert mailbox._retr_into(wire, 1, target, limit=30) is None  # type: ignore[arg-type]
    kept = target.getvalue()
    assert 24 <= len(kept) <= 30 and (b"0123456789\r\n" * 5).startswith(kept)
    assert wire._wire == b""
    target = io.BytesIO()
    wire = Pop3Wire(b"0123456789\r\n" * 2 + b".\r\n", random.Random(1))
    assert mailbox._retr_into(wire, 1, target, limit=24) == 24  # type: ignore[arg-type]


def _collecting_from(session: object, monkeypatch: pytest.MonkeyPatch) -> mailbox.MailboxCollector:
    """An IMAP collector whose session is ``session``."""
    collector = mailbox.MailboxCollector(
        protocol="imap", host="imap.example", username="u", password="p"
    )
    selected = mailbox._Selected(exists=None, uidvalidity="1700000000")
    monkeypatch.setattr(collector, "_imap_session", lambda: (session, selected))
    return collector


class RefusingImap:
    """An IMAP session whose server answers NO to the deletion of mail (a folder the account
    may read but not change): imaplib raises on BAD only, and hands a NO back."""

    capabilities = ("IMAP4REV1", "UIDPLUS")

    def __init__(self, mails: dict[bytes, bytes], *, may_flag: bool = False) -> None:
        self.mails = mails
        self.may_flag = may_flag  # RFC 4314's 't' (flag as deleted) without 'e' (expunge)
        self.flagged: set[bytes] = set()
        self.closed = False

    def uid(self, command: str, *args: Any) -> tuple[str, list[Any]]:
        if command == "SEARCH":
            wanted = (
                (lambda uid: uid in self.flagged)
                if args[0] == "DELETED"
                else (lambda uid: uid not in self.flagged)
            )
            return "OK", [b" ".join(uid for uid in self.mails if wanted(uid))]
        if command == "FETCH":
            uid = args[0].encode()
            body = self.mails[uid]
            return "OK", [(b"1 (UID " + uid + b" BODY[]<0> {%d}" % len(body), body), b")"]
        if command == "STORE" and self.may_flag:
            uid = args[0]
            self.flagged.add(uid if isinstance(uid, bytes) else uid.encode())
            return "OK", [None]
        return "NO", [b"permission denied"]  # STORE, EXPUNGE

    def expunge(self) -> tuple[str, list[Any]]:
        return "NO", [b"permission denied"]

    def close(self) -> None:
        self.closed = True

    def logout(self) -> None:
        self.closed = True

    def shutdown(self) -> None:
        self.closed = True


def test_an_imap_server_that_refuses_deletion_fails_the_round_after_taking_every_mail(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every mail is handed over (none waits behind one that cannot be deleted), and the round
    # then fails, so that the operator hears of it (mailbox-unreachable after a few rounds),
    # instead of each mail being collected and answered again at every poll, unseen.
    session = RefusingImap({b"7": b"first mail\r\n", b"9": b"second mail\r\n"})
    collector = _collecting_from(session, monkeypatch)
    handed: list[bytes] = []
    with pytest.raises(TransportFailure) as failed:
        collector.collect_once(lambda mail: handed.append(mail.read()))
    assert handed == [b"first mail\r\n", b"second mail\r\n"]
    assert failed.value.code == "mailbox-delete"
    assert "2 collected mail(s)" in failed.value.detail
    assert session.closed


def test_mails_flagged_but_never_expunged_fail_every_round_until_they_go(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A server that lets the account flag mail as deleted but not expunge it: the flagged
    # mails are no longer found, so a round without new mail saw nothing wrong, and the
    # alert (three failed rounds in a row) never came while they piled up.
    session = RefusingImap({b"7": b"first mail\r\n"}, may_flag=True)
    collector = _collecting_from(session, monkeypatch)
    handed: list[bytes] = []
    for _ in range(3):
        with pytest.raises(TransportFailure) as failed:
            collector.collect_once(lambda mail: handed.append(mail.read()))
        assert failed.value.code == "mailbox-delete"
    assert handed == [b"first mail\r\n"]  # taken once, never again


def test_a_bad_answer_to_the_expunge_of_old_flagged_mail_still_lets_the_new_mail_in(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # imaplib raises on BAD (a command line thousands of UIDs long, say): counted as refused,
    # so the new mail is still taken and the round then fails as mailbox-delete.
    import imaplib

    session = RefusingImap({b"5": b"old\r\n", b"8": b"new mail\r\n"}, may_flag=True)
    session.flagged.add(b"5")
    real_uid = session.uid

    def bad_expunge(command: str, *args: Any) -> tuple[str, list[Any]]:
        if command == "EXPUNGE":
            raise imaplib.IMAP4.error("BAD command line too long")
        return real_uid(command, *args)

    monkeypatch.setattr(session, "uid", bad_expunge)
    collector = _collecting_from(session, monkeypatch)
    handed: list[bytes] = []
    with pytest.raises(TransportFailure) as failed:
        collector.collect_once(lambda mail: handed.append(mail.read()))
    assert handed == [b"new mail\r\n"]
    assert failed.value.code == "mailbox-delete"


@pytest.mark.parametrize(
    ("reply", "failure"),
    [
        (b"-ERR [IN-USE] Mailbox is locked by another POP3 session.", "mailbox-in-use"),
        (b"[INUSE] Mailbox in use", "mailbox-in-use"),
        (b"-ERR [SYS/TEMP] Failed to create POP3 session lock.", "mailbox-unavailable"),
        (b"[UNAVAILABLE] Temporary authentication failure.", "mailbox-unavailable"),
        (b"-ERR [LOGIN-DELAY] Wait a while", "mailbox-login-delay"),
        (b"-ERR [SYS/PERM] Your account is closed", "mailbox-account-blocked"),
        (b"[CONTACTADMIN] Ask the administrator", "mailbox-account-blocked"),
        (b"[EXPIRED] Password expired", "mailbox-password-expired"),
        (b"[PRIVACYREQUIRED] Use TLS", "mailbox-tls-required"),
        (b"-ERR [AUTH] Authentication failed.", "mailbox-auth-failed"),
        (b"[AUTHENTICATIONFAILED] Authentication failed.", "mailbox-auth-failed"),
        (b"-ERR Authentication failed.", "mailbox-auth-failed"),  # no code: the credentials
        (b"[SOMETHING-NEW] x", "mailbox-auth-failed"),
        ("[inuse] lower case", "mailbox-in-use"),
    ],
)
def test_a_refused_login_is_named_by_the_servers_response_code(
    reply: bytes | str, failure: str
) -> None:
    assert mailbox.login_failure(mailbox.response_code(reply)) == failure


def test_every_login_failure_has_its_own_advice() -> None:
    for failure in set(mailbox.LOGIN_FAILURES.values()):
        assert failure in mail_channel.COLLECTION_ADVICE


class RefusingOneFetch(RefusingImap):
    """An IMAP session whose server answers NO to the FETCH of one mail (one it cannot read),
    and tells its size and Message-Id when asked for them alone."""

    def __init__(self, mails: dict[bytes, bytes], unreadable: bytes) -> None:
        super().__init__(mails, may_flag=True)
        self.unreadable = unreadable
        self.expunged: list[bytes] = []
        self.shut = False

    def uid(self, command: str, *args: Any) -> tuple[str, list[Any]]:
        if command == "FETCH" and args[0].encode() == self.unreadable:
            if "RFC822.SIZE" in args[1]:
                head = b"1 (UID %s RFC822.SIZE 4711 BODY[HEADER.FIELDS (MESSAGE-ID)] {22}" % (
                    self.unreadable
                )
                return "OK", [(head, b"Message-Id: <m2@x>\r\n\r\n"), b")"]
            return "NO", [b"[SERVERBUG] Internal error occurred."]
        if command == "EXPUNGE":
            uid = args[0].encode()
            self.expunged.append(uid)
            self.mails.pop(uid)
            self.flagged.discard(uid)
            return "OK", [None]
        return super().uid(command, *args)

    def shutdown(self) -> None:
        self.shut = True


def test_a_mail_the_imap_server_will_not_fetch_is_left_and_the_rest_collected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A NO for one mail used to end the round (and every round after it) before the mails
    # behind it; it is that mail's failure, reported with what names it, and the session
    # goes on.
    session = RefusingOneFetch(
        {b"7": b"first\r\n", b"8": b"unreadable\r\n", b"9": b"third\r\n"}, unreadable=b"8"
    )
    collector = _collecting_from(session, monkeypatch)
    handed: list[bytes] = []
    refused: list[mailbox.RefusedMail] = []
    result = collector.collect_once(lambda mail: handed.append(mail.read()), refused.append)
    assert handed == [b"first\r\n", b"third\r\n"]
    assert session.expunged == [b"7", b"9"] and list(session.mails) == [b"8"]
    assert (result.delivered, result.refused) == (2, 1)
    assert not session.shut  # not ended as a broken session
    assert refused == [
        mailbox.RefusedMail(
            collector.mailbox, "uid:1700000000:8", "UID 8", 4711, "<m2@x>", "SERVERBUG"
        )
    ]


class EndingOnFetch(RefusingImap):
    """An IMAP session whose server ends it with BYE when a mail is fetched; a second
    shutdown of its closed socket fails, as imaplib's does (EBADF)."""

    def __init__(self, mails: dict[bytes, bytes]) -> None:
        super().__init__(mails)
        self.untagged_responses: dict[str, list[bytes]] = {}
        self.shut = 0

    def uid(self, command: str, *args: Any) -> tuple[str, list[Any]]:
        if command == "FETCH":
            self.untagged_responses["BYE"] = [b"FETCH failed: Internal error occurred."]
            raise imaplib.IMAP4.abort("FETCH failed: Internal error occurred.")
        return super().uid(command, *args)

    def shutdown(self) -> None:
        self.shut += 1
        if self.shut > 1:
            raise OSError(9, "Bad file descriptor")


def test_a_new_session_that_cannot_be_had_after_a_bye_is_the_rounds_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The server ended the session on one mail; the new session is refused: that refusal is
    # the round's failure, not the closed socket of the old one (mailbox-connection-lost).
    session = EndingOnFetch({b"7": b"mail\r\n"})
    collector = mailbox.MailboxCollector(
        protocol="imap", host="imap.example", username="u", password="p"
    )
    selected = mailbox._Selected(exists=None, uidvalidity="1")
    sessions: list[object] = [(session, selected)]

    def next_session() -> object:
        if not sessions:
            raise TransportFailure("mailbox-unavailable", "imap.example refused the login")
        return sessions.pop()

    monkeypatch.setattr(collector, "_imap_session", next_session)
    with pytest.raises(TransportFailure) as failed:
        collector.collect_once(lambda mail: None)
    assert failed.value.code == "mailbox-unavailable"


class EndingServer:
    """An IMAP server that ends the session (BYE) whenever one of its ``unreadable`` mails is
    fetched, as Dovecot does when it cannot read a mail's file; every other mail is handed
    out and deleted. Each login is a new :class:`EndingSession` on the same mails."""

    def __init__(self, mails: dict[bytes, bytes], unreadable: set[bytes]) -> None:
        self.mails = mails
        self.unreadable = unreadable
        self.logins = 0

    def login(self) -> tuple[EndingSession, mailbox._Selected]:
        self.logins += 1
        return EndingSession(self), mailbox._Selected(exists=None, uidvalidity="1700000000")


class EndingSession:
    """One session with an :class:`EndingServer`."""

    capabilities = ("IMAP4REV1", "UIDPLUS")

    def __init__(self, server: EndingServer) -> None:
        self.server = server
        self.untagged_responses: dict[str, list[bytes]] = {}

    def uid(self, command: str, *args: Any) -> tuple[str, list[Any]]:
        assert "BYE" not in self.untagged_responses, "a command on an ended session"
        if command == "SEARCH":
            found = sorted(self.server.mails, key=int) if args[-1] == "UNDELETED" else []
            return "OK", [b" ".join(found)]
        uid = args[0].encode()
        if command == "FETCH":
            if uid in self.server.unreadable:
                self.untagged_responses["BYE"] = [b"FETCH failed: Internal error occurred."]
                raise imaplib.IMAP4.abort("FETCH failed: Internal error occurred.")
            body = self.server.mails[uid]
            return "OK", [(b"1 (UID " + uid + b" BODY[]<0> {%d}" % len(body), body), b")"]
        if command == "EXPUNGE":
            self.server.mails.pop(uid)
        return "OK", [None]  # STORE, EXPUNGE

    def close(self) -> None:
        pass

    def logout(self) -> None:
        pass

    def shutdown(self) -> None:
        pass


def test_mails_that_end_the_imap_session_do_not_block_the_mails_behind_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    # Five unreadable mails, oldest first: each round met them first, and the fourth BYE
    # ended it (mailbox-connection-lost) before the mails behind them, round after round,
    # while no mail-stuck alert named them. Those that ended a session are now taken last.
    import threading

    server = EndingServer(
        {b"%d" % uid: b"mail %d\r\n" % uid for uid in range(1, 9)},
        unreadable={b"1", b"2", b"3", b"4", b"5"},
    )
    collector = mailbox.MailboxCollector(
        protocol="imap", host="imap.example", username="u", password="p"
    )
    monkeypatch.setattr(collector, "_imap_session", server.login)
    intake = mail_channel.MailIntake(None, tmp_path)  # type: ignore[arg-type]
    tries: dict[str, int] = {}

    def count_try(key: str) -> int:
        tries[key] = tries.get(key, 0) + 1
        return tries[key]

    handed: list[bytes] = []
    monkeypatch.setattr(intake, "_count_try", count_try)
    monkeypatch.setattr(intake, "on_mail", lambda mail: handed.append(mail.read()))
    monkeypatch.setattr(intake, "forget_tries_of_mails_gone", lambda seen, before: 0)
    reports: list[tuple[str | None, list[str]]] = []

    def report(*args: Any, stuck: list[str]) -> None:
        failure = args[4]
        reports.append((failure.code if failure is not None else None, list(stuck)))

    monkeypatch.setattr(mail_channel, "report_collection", report)
    rounds = mail_channel.MailCollectorThread(collector, intake, 60, threading.Event())

    rounds._collect_round()  # the fourth BYE in a row, with mails never tried behind it
    assert reports[-1] == ("mailbox-connection-lost", []) and handed == []
    rounds._collect_round()
    assert handed == [b"mail 6\r\n", b"mail 7\r\n", b"mail 8\r\n"]
    assert reports[-1][0] is None
    for _ in range(4):  # the try limit: every stuck mail counted once a round
        rounds._collect_round()
        assert reports[-1][0] is None
    named = reports[-1][1]
    assert {entry.split(" (")[0] for entry in named} == {f"UID {uid}" for uid in range(1, 6)}
    assert all("[BYE]" in entry for entry in named)
    # each round opened at most MAX_REOPEN + 1 sessions more than its first
    assert server.logins <= 6 * (mailbox.MAX_REOPEN + 2)

    # Five more unreadable mails and a good one: the round fails again (BYEs on mails never
    # tried before), but the stuck ones are still named in it; the good one comes next round.
    server.mails.update({b"%d" % uid: b"mail %d\r\n" % uid for uid in range(20, 26)})
    server.unreadable.update(b"%d" % uid for uid in range(20, 25))
    rounds._collect_round()
    code, named = reports[-1]
    assert code == "mailbox-connection-lost"
    assert {entry.split(" (")[0] for entry in named} == {f"UID {uid}" for uid in range(1, 6)}
    rounds._collect_round()
    assert handed[-1] == b"mail 25\r\n" and reports[-1][0] is None


def test_the_last_imap_search_window_is_open_ended(monkeypatch: pytest.MonkeyPatch) -> None:
    # Another collector may expunge mail after our SELECT, and a server may renumber during a
    # UID command (RFC 3501 7.4.1): a last window up to EXISTS could name numbers gone.
    monkeypatch.setattr(mailbox, "SEARCH_WINDOW", 10)
    asked: list[tuple[str, ...]] = []

    class Searched:
        def uid(self, command: str, *args: str) -> tuple[str, list[Any]]:
            asked.append(args)
            return "OK", [b""]

    collector = mailbox.MailboxCollector(
        protocol="imap", host="imap.example", username="u", password="p"
    )
    for exists, windows in [(25, ["1:10", "11:20", "21:*"]), (20, ["1:10", "11:*"]), (0, [])]:
        asked.clear()
        selected = mailbox._Selected(exists=exists, uidvalidity="1")
        collector._search(Searched(), selected, "UNDELETED")  # type: ignore[arg-type]
        assert [window for window, _ in asked] == windows


class Pop3Box:
    """A POP3 server's mailbox: mails as (UIDL, content); the ``unreadable`` ones are refused
    with ``-ERR`` to RETR (and to TOP unless ``top``); ``uidl``: whether it knows UIDL. Each
    login is a :class:`Pop3Session`, whose deletions take effect at QUIT."""

    def __init__(
        self,
        mails: list[tuple[bytes, bytes]],
        unreadable: set[bytes],
        *,
        uidl: bool = True,
        top: bool = True,
    ) -> None:
        self.mails = mails
        self.unreadable = unreadable
        self.knows_uidl = uidl
        self.answers_top = top
        self.asked: list[bytes] = []

    def login(self) -> Pop3Session:
        return Pop3Session(self)


class Pop3Session:
    """One POP3 session: what poplib's calls answer, and the wire ``_retr_into`` reads."""

    def __init__(self, box: Pop3Box) -> None:
        self.box = box
        self.mails = list(box.mails)
        self.deleted: set[int] = set()
        self.sock = self
        self.file = self
        self._wire = b""

    def list(self) -> tuple[bytes, list[bytes], int]:
        return b"+OK", [b"%d %d" % (n, len(m)) for n, (_, m) in enumerate(self.mails, 1)], 0

    def uidl(self, which: int) -> bytes:
        if not self.box.knows_uidl:
            raise poplib.error_proto(b"-ERR unknown command")
        return b"+OK %d %s" % (which, self.mails[which - 1][0])

    def dele(self, which: int) -> bytes:
        self.deleted.add(which)
        return b"+OK"

    def quit(self) -> bytes:
        self.box.mails = [m for n, m in enumerate(self.mails, 1) if n not in self.deleted]
        return b"+OK"

    def close(self) -> None:
        pass

    def sendall(self, command: bytes) -> None:
        self.box.asked.append(command.strip())
        verb, number = command.split()[:2]
        name, mail = self.mails[int(number) - 1]
        if name in self.box.unreadable and (verb == b"RETR" or not self.box.answers_top):
            self._wire = b"-ERR [SYS/TEMP] Internal error occurred.\r\n"
            return
        if verb == b"TOP":
            mail = mail.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
        lines = mail.split(b"\r\n")[:-1]
        stuffed = b"".join((b"." if x.startswith(b".") else b"") + x + b"\r\n" for x in lines)
        self._wire = b"+OK\r\n" + stuffed + b".\r\n"

    def readline(self, limit: int) -> bytes:
        end = self._wire.find(b"\n", 0, limit)
        cut = end + 1 if end >= 0 else limit
        piece, self._wire = self._wire[:cut], self._wire[cut:]
        return piece


def _pop3_collector(box: Pop3Box, monkeypatch: pytest.MonkeyPatch, batch: int = 50) -> Any:
    collector = mailbox.MailboxCollector(
        protocol="pop3", host="pop.example", username="u", password="p", batch=batch
    )
    monkeypatch.setattr(collector, "_pop3_session", box.login)
    return collector


def _pop3_mail(n: int) -> bytes:
    return b"Message-Id: <m%d@x>\r\nSubject: x\r\n\r\nmail %d\r\n.hidden dot\r\n" % (n, n)


def test_a_mail_the_pop3_server_will_not_retr_is_named_by_uidl_and_the_rest_collected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # -ERR to RETR is that mail's refusal: named by its UIDL, its Message-Id told by TOP;
    # the session goes on, and QUIT deletes the mails before and behind it.
    box = Pop3Box([(b"u1", _pop3_mail(1)), (b"u2", _pop3_mail(2)), (b"u3", _pop3_mail(3))], {b"u2"})
    collector = _pop3_collector(box, monkeypatch)
    handed: list[bytes] = []
    refused: list[mailbox.RefusedMail] = []
    result = collector.collect_once(lambda mail: handed.append(mail.read()), refused.append)
    assert handed == [_pop3_mail(1), _pop3_mail(3)]
    assert (result.found, result.delivered, result.refused) == (3, 2, 1)
    assert box.mails == [(b"u2", _pop3_mail(2))]
    assert refused == [
        mailbox.RefusedMail(
            collector.mailbox, "uidl:u2", "number 2", len(_pop3_mail(2)), "<m2@x>", "SYS/TEMP"
        )
    ]


@pytest.mark.parametrize(
    ("uidl", "top", "identity", "message_id"),
    [
        (False, True, "message-id:<m2@x>:{size}", "<m2@x>"),  # no UIDL: Message-Id and size
        (False, False, "number:2:{size}", None),  # neither: its number and size
    ],
)
def test_a_refused_pop3_mail_without_uidl_is_named_by_what_is_left(
    monkeypatch: pytest.MonkeyPatch, uidl: bool, top: bool, identity: str, message_id: str | None
) -> None:
    mails = [(b"u1", _pop3_mail(1)), (b"u2", _pop3_mail(2))]
    box = Pop3Box(mails, {b"u2"}, uidl=uidl, top=top)
    collector = _pop3_collector(box, monkeypatch)
    refused: list[mailbox.RefusedMail] = []
    collector.collect_once(lambda mail: None, refused.append)
    [mail] = refused
    size = len(_pop3_mail(2))
    assert (mail.identity, mail.message_id) == (identity.format(size=size), message_id)
    assert (mail.number, mail.size, mail.said) == ("number 2", size, "SYS/TEMP")


def test_later_pop3_batches_pass_by_a_refused_mail_to_the_ones_behind_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A refused mail stays first in every later listing: each batch passes it by (without
    # asking for it again), so the mails behind it are collected in the same round.
    mails = [(b"bad", _pop3_mail(0))] + [(b"u%d" % n, _pop3_mail(n)) for n in range(1, 4)]
    box = Pop3Box(mails, {b"bad"})
    collector = _pop3_collector(box, monkeypatch, batch=1)
    handed: list[bytes] = []
    refused: list[mailbox.RefusedMail] = []
    collector.collect_once(lambda mail: handed.append(mail.read()), refused.append)
    assert handed == [_pop3_mail(n) for n in range(1, 4)]
    assert [mail.identity for mail in refused] == ["uidl:bad"]
    assert box.mails == [(b"bad", _pop3_mail(0))]
    # the refused mail asked for once; each good one is number 2 once those before it left
    assert box.asked == [b"RETR 1", b"TOP 1 0", b"RETR 2", b"RETR 2", b"RETR 2"]
