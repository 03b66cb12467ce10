"""ebMS 2.0 as HIS 1037 profiles it, without I/O: envelopes, signals, MIME packaging, error codes.

The modules, by job: :mod:`.codes` (namespaces, URNs, ebMS error codes, :class:`EbxmlError`),
:mod:`.values` (the envelope as dataclasses), :mod:`.build` and :mod:`.parse` (to and from XML),
:mod:`.envelope` (both, in one import), :mod:`.signals` (Acknowledgment, MessageError),
:mod:`.mime` (multipart/related), :mod:`.description` (HITS 1210 MSH description),
:mod:`.ids` (message ids and timestamps). Signing and verifying is the security layer's.
"""

from meldingstjener.ebxml.codes import EbxmlError, ErrorCode, ErrorDetail, Severity
from meldingstjener.ebxml.envelope import (
    AcknowledgmentInfo,
    Envelope,
    ErrorList,
    ManifestReference,
    MessageHeader,
    MshDescription,
    Party,
    SignedReference,
    build_envelope,
    build_from,
    check_manifest,
    envelope_bytes,
    new_message_id,
    parse_envelope,
)
from meldingstjener.ebxml.mime import (
    Attachment,
    MimeMessage,
    package,
    unpackage,
    unpackage_envelope,
    unpackage_message,
)
from meldingstjener.ebxml.signals import (
    OriginalIds,
    ReceiptDigests,
    build_acknowledgment,
    build_message_error,
    compare_receipt_digests,
    signature_references,
)

__all__ = [
    "AcknowledgmentInfo",
    "Attachment",
    "EbxmlError",
    "Envelope",
    "ErrorCode",
    "ErrorDetail",
    "ErrorList",
    "ManifestReference",
    "MessageHeader",
    "MimeMessage",
    "MshDescription",
    "OriginalIds",
    "Party",
    "ReceiptDigests",
    "Severity",
    "SignedReference",
    "build_acknowledgment",
    "build_envelope",
    "build_from",
    "build_message_error",
    "check_manifest",
    "compare_receipt_digests",
    "envelope_bytes",
    "new_message_id",
    "package",
    "parse_envelope",
    "signature_references",
    "unpackage",
    "unpackage_envelope",
    "unpackage_message",
]
