"""The fixed vocabulary of ebMS 2.0 as HIS 1037 uses it: namespaces, URNs, error codes, severities.

Also the one exception of the ebXML layer, :class:`EbxmlError`, and the value :class:`ErrorDetail`
that both a parsed ``eb:ErrorList`` and a MessageError we build are made of. Codes are the ebMS 2.0
code set (ebMS 2.0 section 4.2.3.4), so they can go straight into a MessageError to the sender.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from meldingstjener.contentid import cid_url, is_cid_url

SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12_NS = "http://www.w3.org/2003/05/soap-envelope"
EB_NS = "http://www.oasis-open.org/committees/ebxml-msg/schema/msg-header-2_0.xsd"
DS_NS = "http://www.w3.org/2000/09/xmldsig#"
XLINK_NS = "http://www.w3.org/1999/xlink"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
XML_NS = "http://www.w3.org/XML/1998/namespace"

# The prefixes the samples and other Norwegian MSHs use; kept so our XML looks like theirs.
NSMAP: dict[str, str] = {"SOAP": SOAP_NS, "eb": EB_NS, "xlink": XLINK_NS, "xsi": XSI_NS}

EB_VERSION = "2.0"

# ebMS 2.0 service for the MSH's own signals (Acknowledgment, MessageError, Ping, StatusRequest).
EBMS_SERVICE = "urn:oasis:names:tc:ebxml-msg:service"
ACTION_ACKNOWLEDGMENT = "Acknowledgment"
ACTION_MESSAGE_ERROR = "MessageError"

ACTOR_TO_PARTY_MSH = "urn:oasis:names:tc:ebxml-msg:actor:toPartyMSH"
ACTOR_NEXT_MSH = "urn:oasis:names:tc:ebxml-msg:actor:nextMSH"
ACTOR_SOAP_NEXT = "http://schemas.xmlsoap.org/soap/actor/next"

# Default codeContext of eb:Error (ebMS 2.0 4.2.3.4); errors in another context are not ours.
ERROR_CODE_CONTEXT = "urn:oasis:names:tc:ebxml-msg:service:errors"

PARTY_TYPE_HER = "HER"


# A free-text eb:Description (of an eb:Error, or a manifest's eb:Reference) is cut to this
# many characters, when read and when written: peers (and this server, until it cut them)
# refuse a longer value as OtherXml, and then the whole MessageError, the refusal in it lost.
MAX_DESCRIPTION_CHARS = 255


def cut_description(text: str) -> str:
    """``text``, or its beginning and an ellipsis when longer than ``MAX_DESCRIPTION_CHARS``."""
    if len(text) <= MAX_DESCRIPTION_CHARS:
        return text
    return text[: MAX_DESCRIPTION_CHARS - 1] + "\u2026"


def cid_location(content_id: str) -> str:
    """The eb:location of an error in a MIME part: its ``cid:`` URL, encoded as our manifest
    and signature write it (:func:`~meldingstjener.contentid.cid_url`), which
    :func:`~meldingstjener.contentid.content_id_of_url` reads back."""
    return cid_url(content_id)


def wire_location(location: str) -> str:
    """``location`` as an eb:location says it (ebMS 2.0 4.2.3.4.1: an XPointer into the
    envelope, or a part's URI): a path of ours into the envelope (``//eb:MessageHeader/...``,
    ``eb:Manifest``, ``/SOAP:Envelope/...``) becomes ``xpointer(<absolute path>)``, as NAV's
    MSH writes them; a ``cid:`` URL or an XPointer stays as it is. The one place our paths
    are turned into what goes on the wire (:mod:`.build`); the log keeps the path."""
    text = location.strip()
    if is_cid_url(text) or text.startswith("xpointer("):
        return text
    return f"xpointer({text if text.startswith('/') else '//' + text})"


class ErrorCode(StrEnum):
    """ebMS 2.0 error codes (section 4.2.3.4.1 and 4.2.3.4.2)."""

    VALUE_NOT_RECOGNIZED = "ValueNotRecognized"  # element content or attribute value not recognised
    NOT_SUPPORTED = "NotSupported"  # element or attribute not supported
    INCONSISTENT = "Inconsistent"  # value inconsistent with other elements or attributes
    OTHER_XML = "OtherXml"  # any other XML error: not well-formed, required element missing
    DELIVERY_FAILURE = "DeliveryFailure"  # message could not be delivered
    TIME_TO_LIVE_EXPIRED = "TimeToLiveExpired"  # TimeToLive passed before delivery
    SECURITY_FAILURE = "SecurityFailure"  # signature or certificate check failed
    MIME_PROBLEM = "MimeProblem"  # MIME packaging wrong, a cid: reference unresolved
    UNKNOWN = "Unknown"  # anything else


class Severity(StrEnum):
    """eb:Error severity. Warning: the message may still be processed; Error: it is not."""

    WARNING = "Warning"
    ERROR = "Error"


@dataclass(frozen=True, slots=True)
class ErrorDetail:
    """One eb:Error: what is wrong, how bad, where (an XPointer or cid: URI) and a text.

    ``reported_code`` keeps a code a peer sent that is not in the ebMS set (then ``code`` is
    Unknown), so the help desk sees what the peer actually said.
    """

    code: ErrorCode
    severity: Severity = Severity.ERROR
    location: str | None = None
    description: str | None = None
    reported_code: str | None = None


class EbxmlError(ValueError):
    """An ebXML message that cannot be accepted, with the ebMS code to report it by.

    The message text names the defect and where it is, never message content (an envelope
    carries no patient data, but we echo only short identifiers anyway).
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        location: str | None = None,
        severity: Severity = Severity.ERROR,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.location = location
        self.severity = severity

    def __str__(self) -> str:
        where = f" at {self.location}" if self.location else ""
        return f"[{self.code}]{where}: {self.message}"

    def to_detail(self) -> ErrorDetail:
        """The eb:Error to send back to the peer for this defect."""
        return ErrorDetail(self.code, self.severity, self.location, self.message)
