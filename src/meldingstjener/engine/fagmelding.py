"""What the engine needs to know about a business message: its identity and addressing.

One read of the payload gives the validation report (all layers) and the routing facts. MsgHead
and standalone AppRec are both first-class payloads (an AppRec travels without a MsgHead).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from meldingstjener.formats import ValidationReport, validate
from meldingstjener.formats.xmlparse import DEFAULT_MAX_BYTES
from meldingstjener.model import PartyRef


@dataclass(frozen=True)
class Fagmelding:
    report: ValidationReport
    msg_id: str | None
    msg_type: str | None
    version: str | None
    sender: PartyRef
    receiver: PartyRef
    patient_present: bool
    ref_to_parent: str | None = None
    ref_to_conversation: str | None = None
    apprec_original_msg_id: str | None = None
    apprec_status: str | None = None
    apprec_errors: tuple[tuple[str, str], ...] = ()
    copy_receivers: frozenset[str] = frozenset()
    # each AppRec Error's OT, beside ``apprec_errors`` (code V, text DN): the partner EPJ's own
    # words ("Pasient ... ukjent i journal"), which may name the patient: stored masked with the
    # receipt, shown only when asked for (``--texts``, GetApprecInfo), never in a log
    apprec_error_ots: tuple[str | None, ...] = field(default=(), repr=False)

    @property
    def valid(self) -> bool:
        return self.report.valid

    @property
    def namespaces(self) -> tuple[str, ...]:
        """The namespaces of the business document(s), which choose the agreed binding."""
        return self.report.namespaces

    def row_fields(self) -> dict[str, object]:
        """The message-table columns this business message fills (ids, type, HER-ids)."""
        return {
            "msg_id": self.msg_id,
            "msg_type": self.msg_type,
            "msg_type_version": self.version,
            "conversation_ref_to_parent": self.ref_to_parent,
            "conversation_ref_to_conversation": self.ref_to_conversation,
            "sender_org_her_id": self.sender.organisation,
            "sender_service_her_id": self.sender.service,
            "sender_person_her_id": self.sender.person,
            "receiver_org_her_id": self.receiver.organisation,
            "receiver_service_her_id": self.receiver.service,
            "receiver_person_her_id": self.receiver.person,
            "patient_present": self.patient_present,
        }

    def apprec_error_records(self) -> list[dict[str, str]]:
        """The AppRec's Errors as its receipt keeps them (``error_codes``): ``code`` (V),
        ``text`` (DN) and, when the partner wrote one, ``ot`` (OT). Free texts: the store masks
        them (``ReceiptRepository.add``), and they are shown only with ``--texts``."""
        missing = len(self.apprec_errors) - len(self.apprec_error_ots)
        ots = self.apprec_error_ots + (None,) * missing
        return [
            {"code": code, "text": text, **({"ot": ot} if ot else {})}
            for (code, text), ot in zip(self.apprec_errors, ots, strict=False)
        ]

    def apprec_description(self) -> str | None:
        """The AppRec's Errors in words, as a receipt's ``description``: each code, its text
        (DN) and the partner's own (OT), ``E35 Pasient ikke funnet: Pasient ... ukjent``."""
        described = [
            " ".join(part for part in (error["code"], error["text"]) if part)
            + (f": {error['ot']}" if "ot" in error else "")
            for error in self.apprec_error_records()
        ]
        return "; ".join(described) or None

    def problem_lines(self) -> list[str]:
        return [f"{p.path}: {p.message} ({p.code})" for p in self.report.problems]


def inspect(
    data: bytes | os.PathLike[str],
    schema_dir: Path | None = None,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Fagmelding:
    """Validate ``data`` and read the facts routing needs (one parse). Never raises.

    ``data`` may be a file (a path, or a spooled payload): the parser then reads it in pieces,
    and attachments are checked but never decoded, so a 35 MB message costs its tree and no
    more than one transient copy of the attachment text. ``max_bytes`` is the largest XML
    document parsed (``formats.max_xml_bytes``, ``ctx.policy.max_xml_bytes``); a larger one is
    refused by the parser (``xml-refused``) before it is read."""
    report = validate(data, schema_dir, max_bytes=max_bytes)
    msg_id = ref_parent = ref_conversation = original = apprec_status = None
    apprec_errors: tuple[tuple[str, str], ...] = ()
    apprec_error_ots: tuple[str | None, ...] = ()
    copies: set[str] = set()
    head = report.msghead  # read once, by the validator
    if head is not None:
        msg_id = head.msg_id
        if head.conversation_ref is not None:
            ref_parent = head.conversation_ref.ref_to_parent
            ref_conversation = head.conversation_ref.ref_to_conversation
        for other in head.msg_info.other_receivers:
            if other.organisation is not None:
                levels = (other.organisation, other.organisation.organisation)
                copies |= {str(o.her_id) for o in levels if o is not None and o.her_id}
    apprec = report.apprec
    if apprec is not None:
        msg_id = apprec.id
        original = apprec.original_msg_id.id
        apprec_status = str(apprec.status.value)
        apprec_errors = tuple((e.code, e.text or "") for e in apprec.errors)
        apprec_error_ots = tuple(e.ot or None for e in apprec.errors)
    return Fagmelding(
        report=report,
        msg_id=msg_id,
        msg_type=report.type,
        version=report.version,
        sender=report.sender,
        receiver=report.receiver,
        patient_present=report.patient_present,
        ref_to_parent=ref_parent,
        ref_to_conversation=ref_conversation,
        apprec_original_msg_id=original,
        apprec_status=apprec_status,
        apprec_errors=apprec_errors,
        copy_receivers=frozenset(copies),
        apprec_error_ots=apprec_error_ots,
    )
