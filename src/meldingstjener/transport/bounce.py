"""Reading a bounce: a mail server's report that one of our mails could not be delivered.

Two shapes reach our mailbox. A delivery status notification (DSN, RFC 3464) is
``multipart/report; report-type=delivery-status``: a text for people, a
``message/delivery-status`` part with one block of fields per recipient (``Final-Recipient``,
``Action``, ``Status``), and often our original mail (``message/rfc822``) or its headers
(``text/rfc822-headers``). An older "plain" bounce is a text from ``MAILER-DAEMON`` or
``postmaster`` that quotes our original headers somewhere in its body.

What is read from a bounce is codes and addresses only, each checked for its shape: the texts
(the report for people, a ``Diagnostic-Code``, the returned content) may quote the message,
and it may hold patient data. Which of our messages it is about comes from the returned
original: every mail we send has ``Subject: ebXML <eb:MessageId>`` (transport.smtp), and the
returned body, when it is there, has the eb:MessageId in its SOAP envelope. The MIME
Message-Id is of no use here: each attempt gets a fresh one, and it is not stored.

Only the start of a mail is read (the caller passes its first bytes): the report and the
headers of the returned original come first, and a DSN that returns a 35 MB message whole must
not cost 35 MB to recognise.

The email package reads a Content-Type's parameters in time that grows with the square of its
length (``a="`` and then many ``;``: minutes for half a megabyte), and a bounce is anybody's
mail. So no header line longer than ``MAX_HEADER_LINE`` reaches it (:func:`header_cost` checks
the bytes first, the caller before :func:`read_bounce` and :func:`read_bounce` itself before
each text it parses), and the Content-Types of one bounce together may cost no more than one of
the longest allowed. :func:`is_bounce` reads the Content-Type with the project's own parser,
whose time grows with its length only.
"""

from __future__ import annotations

import email
import email.message
import re
from dataclasses import dataclass
from typing import Protocol

from meldingstjener.ebxml.codes import EbxmlError
from meldingstjener.ebxml.mime_headers import MAX_CONTENT_TYPE, parse_content_type
from meldingstjener.model.privacy import codes_shown, partner_code

# RFC 3464 2.3.3: the actions; RFC 3463: the status (class.subject.detail)
_ACTIONS = frozenset({"failed", "delayed", "delivered", "relayed", "expanded"})
_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9.-]{1,190}")
_EBXML_ID = re.compile(r"[!-~]{1,255}")  # what our Subject carries: one printable token
_SUBJECT = re.compile(r"^\s*ebXML\s+(\S+)\s*$")
# a quoted Subject header with its continuation lines: a relay may have folded our long
# Subject ("ebXML" CRLF SP "<id>"), and its value is read as the DSN path reads it (_subject_id)
_SUBJECT_HEADER = re.compile(rb"^Subject:([^\r\n]*(?:\r?\n[ \t][^\r\n]*)*)", re.MULTILINE)
_ENVELOPE_ID = re.compile(rb"<(?:[\w.-]+:)?MessageId>\s*([^<\s]{1,255})\s*</")
_BOUNCERS = ("mailer-daemon", "postmaster")

# The longest header line (unfolded) the email package is given to read: no mail server writes
# a header nearly as long (Postfix keeps at most 100 kB of a mail's headers, all of them), and
# the Content-Type the ebXML reader allows is as long.
MAX_HEADER_LINE = MAX_CONTENT_TYPE
# What the Content-Types one bounce hands the email package may cost together, counted as the
# sum of the squares of their lengths: as much as one of the longest allowed (some 40 ms), where
# a real bounce's few Content-Types of a hundred bytes each cost a thousandth of it.
MAX_CONTENT_TYPE_COST = MAX_HEADER_LINE**2
_HEADER_NAME = re.compile(rb"[A-Za-z0-9-]+:")
_CONTENT_TYPE = b"content-type:"


class HeaderTooLong(ValueError):
    """A bounce (or a mail that says it is one) has a header longer than any mail server writes,
    or Content-Types that together would cost the email package too much time to read. Not
    read further; ``reason`` says which, in numbers only."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class HeaderLookup(Protocol):
    """A mail's headers by name, case-insensitive (ebxml.mime_headers.Headers is one)."""

    def get(self, name: str, default: str | None = None) -> str | None: ...


@dataclass(frozen=True)
class BouncedRecipient:
    """One recipient a DSN reports on: its address, what happened, and the status code ("?"
    where the field was missing or not of its shape)."""

    address: str
    action: str
    status: str


@dataclass(frozen=True)
class Bounce:
    """What a bounce says, in codes and addresses. ``ebxml_message_id``: the eb:MessageId of
    the returned original (None: no original came back, or it is not one of our ebXML mails);
    ``returned_to``: the original's To, the partner's address."""

    dsn: bool
    recipients: tuple[BouncedRecipient, ...]
    ebxml_message_id: str | None
    returned_to: str | None

    @property
    def failed(self) -> bool:
        """Refused for good: a DSN with a recipient that failed, or a plain bounce."""
        return not self.dsn or any(r.action == "failed" for r in self.recipients)

    @property
    def refused_by(self) -> str:
        """The address that refused (the failed recipient, else the original's To), or "?"."""
        for recipient in self.recipients:
            if recipient.action == "failed" and recipient.address != "?":
                return recipient.address
        return self.returned_to or "?"

    @property
    def codes(self) -> str:
        """The status and action of each recipient reported on ("5.1.1 failed")."""
        told = [f"{r.status} {r.action}" for r in self.recipients]
        # a DSN may report on thousands of recipients: ten codes and a count are enough
        return codes_shown(told) if told else "no status code given"


def is_bounce(headers: HeaderLookup) -> bool:
    """Whether a mail with these headers is a bounce: a DSN, or a report from a mailer daemon
    or postmaster (by its From; a bounce travels with an empty envelope sender, ``<>``)."""
    content_type = _main_type(headers.get("Content-Type"))
    if content_type == "multipart/report" and _is_delivery_report(headers):
        return True
    if content_type == "multipart/related":
        return False  # ebXML, whoever sent it
    sender = (headers.get("From") or "").lower()
    return_path = (headers.get("Return-Path") or "").strip()
    return any(name in sender for name in _BOUNCERS) and return_path in ("", "<>")


def header_cost(data: bytes) -> int:
    """What reading the headers in ``data`` costs the email package: the sum of the squares of
    the lengths of its Content-Type lines. Raises :class:`HeaderTooLong` for a header line
    (unfolded) over ``MAX_HEADER_LINE`` bytes.

    Every line that starts like a header (a name and a colon) counts, wherever it stands: the
    email package reads the headers of every nested part and returned mail, and a part's own
    header block cannot be told from its body without reading the structure this guards. A
    body line that looks like a header and is that long is refused with them."""
    cost = 0
    length = 0  # of the header being unfolded; 0: not in a header
    content_type = False
    for line in data.split(b"\n"):
        if length and line[:1] in (b" ", b"\t"):
            length += len(line)
        else:
            cost += length * length if content_type else 0
            length = len(line) if _HEADER_NAME.match(line) else 0
            content_type = line[: len(_CONTENT_TYPE)].lower() == _CONTENT_TYPE
        if length > MAX_HEADER_LINE:
            raise HeaderTooLong(
                f"a header line of more than {MAX_HEADER_LINE:,} bytes ({len(data):,} bytes read)"
            )
    return cost + (length * length if content_type else 0)


def _checked(data: bytes, spent: int) -> int:
    """``spent`` plus what ``data``'s headers cost; :class:`HeaderTooLong` over the budget."""
    spent += header_cost(data)
    if spent > MAX_CONTENT_TYPE_COST:
        raise HeaderTooLong(
            "Content-Type headers that together are too long to be read "
            f"(their squared lengths sum to {spent:,}; the limit is {MAX_CONTENT_TYPE_COST:,})"
        )
    return spent


def read_bounce(head: bytes) -> Bounce:
    """What the start of a bounce (``head``: its first bytes, headers included) says. Raises
    :class:`HeaderTooLong` for headers the email package must not be given (see the module's
    docstring)."""
    spent = _checked(head, 0)
    mail = email.message_from_bytes(head)
    recipients: list[BouncedRecipient] = []
    returned: list[email.message.Message] = []
    dsn = False
    for part in mail.walk():
        kind = part.get_content_type()
        if kind == "message/delivery-status":
            dsn = True
            recipients += _recipients(part)
        elif kind == "message/rfc822" and isinstance(part.get_payload(), list):
            returned += [m for m in part.get_payload() if isinstance(m, email.message.Message)]
        elif kind == "text/rfc822-headers" and not returned:  # the first one is read
            headers = _bytes_of(part)  # decoded: what was checked above may have been base64
            spent = _checked(headers, spent)
            returned.append(email.message_from_bytes(headers))
    if returned:
        original = returned[0]
        ebxml_id = _subject_id(_header(original, "Subject")) or _envelope_id(original)
        returned_to = _address(_header(original, "To"))
    else:
        # a plain bounce quotes the original's headers in its text
        text = b"".join(_bytes_of(part) for part in mail.walk() if not part.is_multipart())
        ebxml_id, returned_to = _quoted_original(text, spent)
    return Bounce(dsn, tuple(recipients), ebxml_id, returned_to)


def _main_type(value: str | None) -> str:
    """The media type of a Content-Type; a mail without one is text/plain (RFC 2045 5.2), as
    a qmail bounce is, which has no MIME headers at all."""
    return (value or "text/plain").split(";", 1)[0].strip().lower()


def _is_delivery_report(headers: HeaderLookup) -> bool:
    try:  # the project's parser: the email package's costs the square of the value's length
        _, params = parse_content_type(headers.get("Content-Type") or "")
    except EbxmlError:  # over MAX_CONTENT_TYPE, or no media type: no report we can read
        return False
    return params.get("report-type", "").lower() == "delivery-status"


def _recipients(part: email.message.Message) -> list[BouncedRecipient]:
    """The per-recipient blocks of a ``message/delivery-status`` part (the first block is
    about the message, and has no Final-Recipient)."""
    blocks = part.get_payload()
    if not isinstance(blocks, list):
        return []
    found = []
    for block in blocks:
        if not isinstance(block, email.message.Message):
            continue
        final = _header(block, "Final-Recipient") or _header(block, "Original-Recipient")
        if final is None:
            continue
        action = (_header(block, "Action") or "").strip().lower()
        found.append(
            BouncedRecipient(
                address=_address(final.split(";", 1)[-1]) or "?",
                action=action if action in _ACTIONS else "?",
                status=partner_code((_header(block, "Status") or "").split(" ", 1)[0], _STATUS),
            )
        )
    return found


def _header(mail: email.message.Message, name: str) -> str | None:
    """A header's value as text. The email package gives a header with 8-bit bytes in it as a
    ``Header`` object, not a str (a bounce may carry any bytes, and was refused as unreadable)."""
    value = mail.get(name)
    return None if value is None else str(value)


def _bytes_of(part: email.message.Message) -> bytes:
    """A leaf part's content, its transfer encoding undone (leniently: a bounce is cut off)."""
    try:
        decoded = part.get_payload(decode=True)
    except (ValueError, TypeError):  # an encoding the package cannot undo
        return b""
    return decoded if isinstance(decoded, bytes) else b""


def _address(value: str | None) -> str | None:
    """One mail address found in ``value``, checked for its shape (and for no national
    identity number in it), lower case; None when there is none."""
    found = _ADDRESS.search(value or "")
    if found is None:
        return None
    address = partner_code(found.group(0), _ADDRESS, limit=255)
    return None if address == "?" else address.lower()


def _subject_id(subject: str | None) -> str | None:
    """The eb:MessageId of our ``Subject: ebXML <id>``, folded or not; None for any other."""
    unfolded = re.sub(r"\r?\n[ \t]+", " ", subject or "")
    found = _SUBJECT.match(unfolded)
    return _checked_id(found.group(1)) if found else None


def _envelope_id(original: email.message.Message) -> str | None:
    """The eb:MessageId in the SOAP envelope of a returned ebXML mail."""
    for part in original.walk():
        if part.get_content_maintype() == "text" or part.get_content_subtype() == "xml":
            found = _ENVELOPE_ID.search(_bytes_of(part))
            if found is not None:
                return _checked_id(found.group(1).decode("ascii", "replace"))
    return None


def _quoted_original(text: bytes, spent: int) -> tuple[str | None, str | None]:
    """The eb:MessageId and To of our original as a plain bounce quotes its headers: the
    header block around its ``Subject: ebXML <id>`` header (folded or not). ``spent``: what
    the bounce's headers cost so far (the quoted ones are read too)."""
    for found in _SUBJECT_HEADER.finditer(text):
        ebxml_id = _subject_id(found.group(1).decode("ascii", "replace"))
        if ebxml_id is not None:
            break
    else:
        return None, None
    start = max(text.rfind(b"\n\n", 0, found.start()), text.rfind(b"\n\r\n", 0, found.start()))
    block = text[start + 1 if start >= 0 else 0 :]
    _checked(block, spent)  # decoded: what was checked before may have been base64
    quoted = email.message_from_bytes(block.lstrip(b"\r\n"))
    return ebxml_id, _address(_header(quoted, "To"))


def _checked_id(value: str) -> str | None:
    return value if _EBXML_ID.fullmatch(value) else None


__all__ = [
    "MAX_HEADER_LINE",
    "Bounce",
    "BouncedRecipient",
    "HeaderLookup",
    "HeaderTooLong",
    "header_cost",
    "is_bounce",
    "read_bounce",
]
