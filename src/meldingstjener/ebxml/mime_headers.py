"""MIME header blocks and Content-Type parameters, read and written without the email package.

Why our own: the header block of an ebXML mail is small, but it sits in front of a body of up to
51 MB. Reading it here by offsets means the body is never copied to find where it starts, and
the rules are the few RFC 5322/2045 ones ebXML needs: unfolding continuation lines, CRLF or LF
line ends, case-insensitive names, quoted parameter values.
"""

from __future__ import annotations

from meldingstjener.contentid import content_id
from meldingstjener.ebxml.codes import EbxmlError, ErrorCode
from meldingstjener.ebxml.mime_source import ByteSource

MAX_HEADER_BLOCK = 256 * 1024  # a real mail's headers are a few kB; refuse runaway blocks
# A body part has a Content-Type, a Content-ID, a Content-Transfer-Encoding and perhaps a
# Content-Description: a few hundred bytes. With up to 100 parts, each may cost this much reading.
MAX_PART_HEADER_BLOCK = 64 * 1024
# A Content-Type is a media type, a boundary (at most 70 characters), a start content-id, a type
# and perhaps a charset or start-info: well under 1 kB
MAX_CONTENT_TYPE = 8 * 1024
FOLD_AT = 78


class Headers:
    """An ordered header list with case-insensitive lookup of the first value of a name."""

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self.items = items
        self._first: dict[str, str] = {}
        for name, value in items:
            self._first.setdefault(name.lower(), value)

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._first.get(name.lower(), default)

    def as_dict(self) -> dict[str, str]:
        """First value of each header, by lower-case name."""
        return dict(self._first)


def split_header_block(
    data: ByteSource, start: int, end: int, what: str, limit: int = MAX_HEADER_BLOCK
) -> tuple[Headers, int]:
    """Parse the header lines of ``data[start:end]``; return them and where the body begins.

    The block ends at the first empty line (``\\n\\n`` or ``\\r\\n\\r\\n``, also mixed). Lines
    starting with a space or tab continue the previous header (folding). At most ``limit``
    bytes (and the line end after them) are read, in one piece, and parsed in memory: a block
    that does not end within them is a MimeProblem, and a part without headers is not scanned
    to its end. (Finding each line in a file would cost a read per line.)
    """
    stop = min(end, start + limit + 1)
    block = data[start:stop]
    names: list[str] = []
    values: list[list[str]] = []  # a header's value and its continuation lines, joined once
    pos = 0
    while True:
        if pos > limit:
            raise EbxmlError(ErrorCode.MIME_PROBLEM, f"the {what} headers are implausibly long")
        newline = block.find(b"\n", pos)
        if newline < 0 and stop < end:
            raise EbxmlError(ErrorCode.MIME_PROBLEM, f"the {what} headers are implausibly long")
        if newline < 0:
            if pos == len(block) or not block[pos:].strip():
                # Headers right up to the end with no body (an empty part).
                return _headers(names, values), end
            raise EbxmlError(
                ErrorCode.MIME_PROBLEM,
                f"the {what} has no empty line between its headers and its body",
            )
        line = block[pos:newline].rstrip(b"\r")
        pos = newline + 1
        if not line:
            return _headers(names, values), start + pos
        text = line.decode("latin-1")
        if text[0] in " \t":
            if not values:
                raise EbxmlError(
                    ErrorCode.MIME_PROBLEM, f"the {what} starts with a continuation line"
                )
            values[-1].append(text.strip())
            continue
        name, colon, value = text.partition(":")
        if not colon or not name.strip() or " " in name.strip():
            raise EbxmlError(ErrorCode.MIME_PROBLEM, f"the {what} has a line that is not a header")
        names.append(name.strip())
        values.append([value.strip()])


def _headers(names: list[str], values: list[list[str]]) -> Headers:
    """Unfolded: the pieces of each value joined by one space, the blank ones left out."""
    return Headers(
        [
            (name, " ".join(piece for piece in pieces if piece))
            for name, pieces in zip(names, values, strict=True)
        ]
    )


def _read_value(text: str, pos: int) -> tuple[str, int]:
    """A parameter value at ``pos``: a quoted string (with backslash escapes) or a token."""
    if pos < len(text) and text[pos] == '"':
        out: list[str] = []
        pos += 1
        while pos < len(text):
            char = text[pos]
            if char == "\\" and pos + 1 < len(text):
                out.append(text[pos + 1])
                pos += 2
                continue
            if char == '"':
                return "".join(out), pos + 1
            out.append(char)
            pos += 1
        raise EbxmlError(ErrorCode.MIME_PROBLEM, "a quoted Content-Type parameter is not closed")
    stop = text.find(";", pos)
    stop = len(text) if stop < 0 else stop
    return text[pos:stop].strip(), stop


def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """``("multipart/related", {"boundary": ..., "start": ..., "type": ...})`` from a header
    value; parameter names lower-cased, values unquoted. A value over ``MAX_CONTENT_TYPE``
    characters is a MimeProblem."""
    if len(value) > MAX_CONTENT_TYPE:
        raise EbxmlError(
            ErrorCode.MIME_PROBLEM,
            f"the Content-Type is {len(value)} characters long; the limit is {MAX_CONTENT_TYPE}",
        )
    media, _, rest = value.partition(";")
    media = media.strip().lower()
    if "/" not in media:
        raise EbxmlError(ErrorCode.MIME_PROBLEM, f"not a media type: {media[:40]!r}")
    params: dict[str, str] = {}
    text = rest
    pos = 0
    while pos < len(text):
        while pos < len(text) and text[pos] in " \t;":
            pos += 1
        if pos >= len(text):
            break
        # the '=' of this parameter, if it has one, comes before the next ';' (a quoted value
        # begins after it): searching further would read the rest of the value once for every
        # stray token in it
        semicolon = text.find(";", pos)
        equals = text.find("=", pos, semicolon if semicolon >= 0 else len(text))
        if equals < 0:
            if semicolon < 0:
                break  # a stray token without a value carries nothing we need
            pos = semicolon  # likewise a stray token followed by more parameters
            continue
        name = text[pos:equals].strip().lower()
        pos = equals + 1
        while pos < len(text) and text[pos] in " \t":
            pos += 1
        param, pos = _read_value(text, pos)
        params.setdefault(name, param)
    return media, params


def quote_param(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def bare_content_id(value: str) -> str:
    """A received mail's Message-Id (or a content-id) without its surrounding ``<>`` and
    blanks, read as :func:`~meldingstjener.contentid.content_id` reads a content-id. A value
    that is none (``<a``, ``x<y``) is not refused but taken as it is, its outer brackets off:
    a Message-Id only names a mail in the log and the quarantine, and a mail must not fail
    on it (it would stay in the box, tried round after round). What we write goes through
    :func:`~meldingstjener.contentid.written_content_id`, which refuses such a value."""
    bare = content_id(value)
    if bare is not None:
        return bare
    return value.strip().removeprefix("<").removesuffix(">").strip()


def render_header(name: str, value: str) -> bytes:
    """One header line with CRLF, folded before ``;`` parameters when longer than 78."""
    line = f"{name}: {value}"
    if len(line) > FOLD_AT and "; " in value:
        line = f"{name}: " + ";\r\n\t".join(value.split("; "))
    return line.encode("ascii") + b"\r\n"
