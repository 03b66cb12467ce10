"""The HIS 1037 envelope in one import: its values, building it and parsing it.

A convenience façade so callers write ``from meldingstjener.ebxml.envelope import ...``; the
code lives in :mod:`.values`, :mod:`.build` and :mod:`.parse` (kept apart so each stays small
and parse/build cannot grow hidden dependencies on each other).
"""

from meldingstjener.ebxml.build import build_envelope, build_from, envelope_bytes
from meldingstjener.ebxml.description import MshDescription
from meldingstjener.ebxml.ids import format_timestamp, new_message_id, parse_timestamp
from meldingstjener.ebxml.parse import check_manifest, parse_envelope
from meldingstjener.ebxml.values import (
    AcknowledgmentInfo,
    Envelope,
    ErrorList,
    ManifestReference,
    MessageHeader,
    Party,
    SignedReference,
    content_id_from_href,
)

__all__ = [
    "AcknowledgmentInfo",
    "Envelope",
    "ErrorList",
    "ManifestReference",
    "MessageHeader",
    "MshDescription",
    "Party",
    "SignedReference",
    "build_envelope",
    "build_from",
    "check_manifest",
    "content_id_from_href",
    "envelope_bytes",
    "format_timestamp",
    "new_message_id",
    "parse_envelope",
    "parse_timestamp",
]
