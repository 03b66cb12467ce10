"""Content-ids read one way, whether a MIME ``Content-ID`` header, a manifest's ``href`` or a
``ds:Reference`` URI names them.

A part ``Content-ID: <x>`` is named by the URL ``cid:x`` (RFC 2392: the scheme in any case, the
content-id percent-encoded). Senders differ on the angle brackets, so one pair around the value
is taken off; a content-id (RFC 2822's msg-id) holds no ``<`` or ``>`` itself, and a value that
still does after that is no content-id. The MIME reader, the manifest and the signature check all
read through these two functions: were one of them to take off every bracket and another one
pair, a part ``<<x>>`` would be ``<x>`` to the first and ``x`` to the other, two parts for the
MIME reader and one for the signature check, and a payload could be swapped under a genuine
signature.
"""

from __future__ import annotations

from urllib.parse import quote, unquote

CID_SCHEME = "cid:"


def content_id(value: str) -> str | None:
    """The bare content-id of ``value`` (a header value, with or without its ``<>``): blanks and
    one surrounding pair of angle brackets taken off. None when nothing is left or a ``<`` or
    ``>`` is."""
    text = value.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    if not text or "<" in text or ">" in text:
        return None
    return text


def written_content_id(value: str) -> str:
    """The bare content-id of ``value`` for a part (or a mail's Message-Id) we write, read as
    :func:`content_id` reads it: a value that is no content-id (``x<y``, ``<a``, ``<>``) raises
    ValueError, since our own reader would refuse the part written with it, and so does one
    holding a control character (a CR or LF would end the header line it is written into).
    The ids we generate are always content-ids; a caller passing what a user gave maps the
    ValueError to its own error."""
    bare = content_id(value)
    if bare is None or any(ord(char) < 0x20 or ord(char) == 0x7F for char in bare):
        raise ValueError(f"not a content-id: {value[:60]!r}")
    return bare


def is_cid_url(url: str) -> bool:
    """Whether ``url`` is a ``cid:`` URL (the scheme in any case)."""
    return url[: len(CID_SCHEME)].lower() == CID_SCHEME


def content_id_of_url(url: str) -> str | None:
    """The bare content-id a ``cid:`` URL names (percent-decoded), or None when ``url`` is not a
    ``cid:`` URL or names no content-id."""
    if not is_cid_url(url):
        return None
    return content_id(unquote(url[len(CID_SCHEME) :]))


# what RFC 2392 lets a cid: URL hold unencoded of a content-id: the form our signatures have
# always written (a ds:Reference URI is signed, and compared as written by a receiver that
# does not normalise it: it must not change under messages in flight)
_CID_SAFE = "@.-_!~*()$&+,;=:"


def cid_url(value: str) -> str:
    """The ``cid:`` URL of a content-id (bare or in ``<>``, as :func:`content_id` reads it), as
    our signature's ``ds:Reference``, our manifest's ``href`` and our error locations write
    it: the one encoding of them all (``part(1)/a@x`` is ``cid:part(1)%2Fa@x``). A value that
    is no content-id (an error location naming what a part said) is encoded as it is; whoever
    writes a reference checks the content-id first."""
    bare = content_id(value)
    return CID_SCHEME + quote(value.strip() if bare is None else bare, safe=_CID_SAFE)


def comparable_uri(uri: str) -> str:
    """``uri`` as two references to one part are compared: a ``cid:`` URL as :func:`cid_url`
    writes its content-id (``cid:<x>``, ``CID:x`` and ``cid:%3Cx%3E`` are ``cid:x``); any other
    URI (the envelope's ``""``) as it is."""
    bare = content_id_of_url(uri)
    return uri if bare is None else cid_url(bare)
