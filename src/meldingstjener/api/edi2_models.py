"""Request and response bodies of the EDI 2.0-shaped API, with the names of NHN's msh-api-v2.

Field names, enums and ``additionalProperties: false`` follow NHN's OpenAPI document so a client
generated from it works against this server unchanged.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

HerIdInt = int
MAX_INT32 = 2_147_483_647
# What a business document may be posted as: NHN's contract types both fields as strings, and a
# value outside these is refused with 400 invalid-input by the operation (as other invalid
# values are), not by the schema
XML_CONTENT_TYPES = ("application/xml", "text/xml")
TRANSFER_ENCODING = "base64"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AppRecStatus(StrEnum):
    Ok = "Ok"
    Rejected = "Rejected"
    OkErrorInMessagePart = "OkErrorInMessagePart"


class DeliveryState(StrEnum):
    Unconfirmed = "Unconfirmed"
    Acknowledged = "Acknowledged"
    Rejected = "Rejected"


class OrderBy(StrEnum):
    Ascending = "Ascending"
    Descending = "Descending"

    @classmethod
    def _missing_(cls, value: object) -> OrderBy | None:
        # NHN's contract lists the names, but describes the parameter as "1 = Ascending,
        # 2 = Descending" and gives "1" as its example: a client may send either
        return {"1": cls.Ascending, "2": cls.Descending}.get(str(value))


class EbXmlInfo(_Strict):
    cpaId: str | None = Field(default=None, max_length=255)
    conversationId: str | None = Field(default=None, max_length=255)
    service: str | None = Field(default=None, max_length=255)
    serviceType: str | None = Field(default=None, max_length=255)
    action: str | None = Field(default=None, max_length=255)
    senderRole: str | None = Field(default=None, max_length=255)
    useSenderLevel1HerId: bool | None = None
    receiverRole: str | None = Field(default=None, max_length=255)
    applicationName: str | None = Field(default=None, max_length=255)
    applicationVersion: str | None = Field(default=None, max_length=255)
    middlewareName: str | None = Field(default=None, max_length=255)
    middlewareVersion: str | None = Field(default=None, max_length=255)
    compressPayload: bool | None = None


class PostMessageRequest(_Strict):
    businessDocument: str = Field(min_length=1)
    contentType: str = Field(
        min_length=1,
        max_length=255,
        description=f"The business document's media type: {' or '.join(XML_CONTENT_TYPES)} "
        "(case and parameters such as '; charset=utf-8' aside); another is refused with 400",
        examples=[XML_CONTENT_TYPES[0]],
    )
    contentTransferEncoding: str = Field(
        min_length=1,
        max_length=64,
        description=f"How businessDocument is encoded: {TRANSFER_ENCODING} (in any case); "
        "another is refused with 400",
        examples=[TRANSFER_ENCODING],
    )
    ebXmlOverrides: EbXmlInfo | None = None
    receiverHerIdsSubset: list[int] | None = None


class AppRecError(_Strict):
    errorCode: str | None = Field(max_length=32)
    details: str | None = Field(max_length=2000)
    description: str | None = Field(default=None, max_length=2000)
    oid: str | None = Field(default=None, max_length=64)


class PostAppRecRequest(_Strict):
    appRecStatus: AppRecStatus | int = Field(
        description="Ok, Rejected or OkErrorInMessagePart (or 1, 2, 3 as in the AppRec)"
    )
    appRecErrorList: list[AppRecError] | None = None
    ebXmlOverrides: EbXmlInfo | None = None


class Message(_Strict):
    id: str | None = None
    contentType: str | None = None
    receiverHerId: int | None = None
    senderHerId: int | None = None
    businessDocumentId: str | None = None
    businessDocumentGenDate: datetime | None = None
    isAppRec: bool | None = None


class GetBusinessDocumentResponse(_Strict):
    businessDocument: str
    contentType: str
    contentTransferEncoding: str


def _sent_again_as() -> Any:
    """Our extension of StatusInfo and ApprecInfo: present only for a message an operator sent
    again (``meldingstjener resend``), so that every other answer keeps NHN's shape exactly."""
    return Field(
        default=None,
        exclude_if=lambda value: value is None,
        description="Extension, not in EDI 2.0, present only for a message sent again by the "
        "operator (meldingstjener resend): the id of its newest copy, whose outcome this is",
    )


class StatusInfo(_Strict):
    receiverHerId: int
    transportDeliveryState: DeliveryState
    appRecStatus: AppRecStatus | None = None
    sentAgainAs: str | None = _sent_again_as()


class ApprecInfo(_Strict):
    receiverHerId: int
    appRecStatus: AppRecStatus | None = None
    appRecErrorList: list[AppRecError] | None = None
    sentAgainAs: str | None = _sent_again_as()


class MisaddressedRequest(_Strict):
    """Our extension: a clinician says a received message was not meant for us."""

    reason: str = Field(min_length=1, max_length=500, description="Why, in words for the sender")
