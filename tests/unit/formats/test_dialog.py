"""Dialogmelding 1.0/1.1 and DIALOG_AVVIK: read and build, answers point at their question."""

from __future__ import annotations

from pathlib import Path

import pytest

from meldingstjener.formats import (
    Attachment,
    Coded,
    Dialogmelding,
    Foresporsel,
    InvalidValue,
    Notat,
    Party,
    build_dialog_avvik,
    build_dialog_svar,
    build_dialogmelding,
    read_dialog,
    read_msghead,
    validate,
)

FORESPORSEL = "dialogmelding__1.0__foresporsel-og-svar__dialog-foresporsel-samsvar-test.xml"
SENDER = Party.of("Legekontoret", 56704, service_name="Fastlegene", service_her_id=90998)
RECEIVER = Party.of("Sykehuset", 59, service_name="Ortopedisk kirurgi", service_her_id=90999)


def test_read_foresporsel_sample(samples: Path) -> None:
    message = read_dialog((samples / FORESPORSEL).read_bytes())
    assert message.dialog.version == "1.0"
    (question,) = message.dialog.foresporsler
    assert question.type == Coded(v="99", dn="Annen henvendelse", s="2.16.578.1.12.4.1.1.9152")
    assert question.sporsmal is not None and question.sporsmal.startswith("Pas går snart tom")
    (role,) = question.roles
    assert role.professional and role.idents[0].id == "9876543"
    assert role.telecoms == ("tel:72727272",)


def test_read_helsefaglig_sample(samples: Path) -> None:
    name = "dialogmelding__1.1__helsefaglig-dialog__samsvar-test-message.xml"
    message = read_dialog((samples / name).read_bytes())
    assert message.head.message_type == "DIALOG_HELSEFAGLIG"
    assert message.dialog.version == "1.1"
    (note,) = message.dialog.notater
    assert note.tema == "EKG tatt i dag"
    assert note.tema_kodet.s == "2.16.578.1.12.4.1.1.7322"


def test_answer_points_at_the_question_and_carries_it(samples: Path, kith_xsd: Path) -> None:
    question = read_msghead((samples / FORESPORSEL).read_bytes())
    data = build_dialog_svar(question, answer_text="Resept er fornyet.", msg_id="svar-1")
    answer = read_dialog(data)
    head = answer.head
    assert head.message_type == "DIALOG_SVAR"
    assert head.conversation_ref is not None
    assert head.conversation_ref.ref_to_parent == question.msg_id
    assert head.conversation_ref.ref_to_conversation == question.msg_id
    assert head.sender_her_ids == question.receiver_her_ids
    assert head.receiver_her_ids == question.sender_her_ids
    (note,) = answer.dialog.notater
    assert note.tekst == "Resept er fornyet."
    assert note.foresporsel is not None
    assert (
        note.foresporsel.sporsmal
        == read_dialog((samples / FORESPORSEL).read_bytes()).dialog.foresporsler[0].sporsmal
    )
    assert validate(data, kith_xsd).valid


def test_dialog_avvik_names_the_faulty_message_and_leaves_the_patient_out(
    samples: Path, kith_xsd: Path
) -> None:
    faulty = read_msghead((samples / FORESPORSEL).read_bytes())
    data = build_dialog_avvik(faulty, description="Meldingen var feiladressert og er slettet.")
    message = read_dialog(data)
    assert message.head.message_type == "DIALOG_AVVIK"
    assert message.head.message_type_name == "Tilbakemelding om feil i mottatt melding"
    assert message.head.conversation_ref is not None
    assert message.head.conversation_ref.ref_to_parent == faulty.msg_id
    assert message.dialog.notater[0].dok_id == faulty.msg_id
    assert message.head.receiver_her_ids == faulty.sender_her_ids
    assert not message.head.patient_present
    assert b"15720255178" not in data
    assert validate(data, kith_xsd).valid
    with_patient = read_msghead(build_dialog_avvik(faulty, description="x", include_patient=True))
    assert with_patient.patient_present


def test_helsefaglig_with_attachment_is_xsd_valid(kith_xsd: Path) -> None:
    dialog = Dialogmelding(
        version="1.1",
        notater=(Notat(tema_kodet=Coded(v="6", dn="Henvendelse om pasient"), tekst="Se vedlegg"),),
    )
    data = build_dialogmelding(
        message_type="DIALOG_HELSEFAGLIG",
        sender=SENDER,
        receiver=RECEIVER,
        dialog=dialog,
        attachments=[Attachment(data=b"%PDF-1.4 test", mime_type="application/pdf")],
    )
    message = read_dialog(data)
    assert message.dialog == dialog
    assert message.head.attachments[0].content_base64 == b"%PDF-1.4 test"
    report = validate(data, kith_xsd)
    assert report.valid, report.problems


def test_type_and_version_must_agree() -> None:
    question = Dialogmelding(version="1.1", foresporsler=(Foresporsel(type=Coded(v="99")),))
    with pytest.raises(InvalidValue, match=r"Dialogmelding 1\.0"):
        build_dialogmelding(
            message_type="DIALOG_FORESPORSEL", sender=SENDER, receiver=RECEIVER, dialog=question
        )


def test_foresporsel_and_notat_together_are_refused() -> None:
    mixed = Dialogmelding(
        version="1.0",
        foresporsler=(Foresporsel(type=Coded(v="99")),),
        notater=(Notat(tema_kodet=Coded(v="99")),),
    )
    with pytest.raises(InvalidValue, match="not both"):
        build_dialogmelding(
            message_type="DIALOG_NOTAT", sender=SENDER, receiver=RECEIVER, dialog=mixed
        )


def test_free_text_of_a_message_is_never_in_a_repr() -> None:
    # A log line with a read model (log.debug("%r", ...)) must not carry what a clinician wrote.
    from meldingstjener.formats.apprec import AppRecError
    from meldingstjener.formats.msghead import Document, RefDoc

    private = "Kari Nordmann"
    shown = [
        Notat(tema_kodet=Coded(v="1", dn="Helseopplysninger"), tema=private, tekst=private),
        Foresporsel(type=Coded(v="1"), sporsmal=private, emne=private, begrunnelse=private),
        Attachment(data=b"x", mime_type="application/pdf", description=private),
        AppRecError(code="X99", text=private, ot=private),
        Document(
            RefDoc(msg_type=Coded(v="A"), description=private, file_reference=private),
            content_description=private,
        ),
    ]
    for model in shown:
        assert private not in repr(model), type(model).__name__
