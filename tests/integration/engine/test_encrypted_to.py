"""A queued message holds ciphertext for the receiver's encryption certificate of the time it was
accepted: once the receiver has replaced that certificate it still goes (the old key normally
still decrypts during a rollover), with a note on the message; a message whose type the
agreement no longer takes is given up."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding
from engine_pair import Pair, sent_header
from sqlalchemy import update
from test_cpa_bindings import _real_pom, _with_nav_cpa

from meldingstjener.devsites import GP_HER, HOSPITAL_HER, dialog_note
from meldingstjener.engine import receipts
from meldingstjener.engine.alerts import AlertKind
from meldingstjener.engine.directory import certificate_sha256
from meldingstjener.engine.outbound import submit
from meldingstjener.registry.certificates import certificate_from_der
from meldingstjener.registry.store import (
    agreement_from_row,
    party_from_row,
    save_agreement,
    save_parties,
)
from meldingstjener.security.devpki import init_pki, organisation_number_for
from meldingstjener.store.tables import MessageRow

SECRET = "Kari Nordmann har hjertesvikt"  # patient data: in no alert or event


def _queued(pair: Pair) -> str:
    """A message submitted while the hospital is down: one attempt failed, it is retrying."""
    pair.network.down.add(pair.hospital_site.endpoint)
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, SECRET), actor="t")
    pair.run()
    assert pair.message(pair.gp, message_id).status == "retrying"
    pair.network.down.clear()
    return message_id


def _replace_hospital_encryption_certificate(pair: Pair) -> str:
    """The register now names a new encryption certificate of the hospital (same CA, same
    organisation, another key), as after a rollover; its SHA-256."""
    her_id = "8398001"
    pki = init_pki(
        pair.gp_site.directory.parent / "pki",
        [her_id],
        organisation_numbers={her_id: organisation_number_for(HOSPITAL_HER)},
    )
    new = pki.parties[her_id].encryption.certificate
    with pair.gp.store.unit_of_work() as uow:
        row = uow.parties.get("8200002")
        assert row is not None
        party = dataclasses.replace(
            party_from_row(row),
            encryption_certificate=certificate_from_der(new.public_bytes(Encoding.DER)),
        )
        save_parties(uow, [party])
        uow.commit()
    return certificate_sha256(new)


def _until_the_resend(pair: Pair) -> None:
    with pair.gp.store.unit_of_work() as uow:
        partner = pair.gp.directory.partner(uow, "8200002", our_her_id="8100001")
    pair.clock.advance(seconds=partner.retry_interval.total_seconds() + 60)


def _given_up(pair: Pair, message_id: str, attempts: int) -> str:
    row = pair.message(pair.gp, message_id)
    assert row.status == "not-delivered"
    assert row.attempts == attempts  # nothing more was sent
    assert pair.inbound_messages(pair.hospital) == []
    with pair.gp.store.unit_of_work() as uow:
        [alert] = [
            a
            for a in uow.alerts.list(open_only=True, kind=AlertKind.NOT_DELIVERED)
            if a.message_id == message_id
        ]
        events = [str(e.detail) for e in uow.events.for_message(message_id)]
    summary = str(alert.summary)
    assert all(SECRET not in text for text in [summary, *events])
    return summary


def test_the_certificate_a_message_was_encrypted_to_is_recorded(pair: Pair) -> None:
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    with pair.gp.store.unit_of_work() as uow:
        partner = pair.gp.directory.partner(uow, "8200002", our_her_id="8100001")
    assert partner.encryption_certificate is not None
    expected = certificate_sha256(partner.encryption_certificate)
    assert pair.message(pair.gp, message_id).encrypted_to_sha256 == expected
    pair.run()
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"


def _notes(pair: Pair, ctx: object, message_id: str) -> list[str]:
    with ctx.store.unit_of_work() as uow:  # type: ignore[attr-defined]
        events = list(uow.events.for_message(message_id))
    texts = [str(e.detail) for e in events]
    assert all(SECRET not in text for text in texts)
    return [str(e.detail) for e in events if e.code == "encrypted-to-replaced"]


def test_a_queued_message_goes_with_a_note_once_the_receiver_has_replaced_its_certificate(
    pair: Pair,
) -> None:
    # during a rollover the hospital still holds its old key: the old ciphertext is taken
    message_id = _queued(pair)
    old = pair.message(pair.gp, message_id).encrypted_to_sha256
    assert old is not None
    new = _replace_hospital_encryption_certificate(pair)
    pair.clock.advance(minutes=11)
    pair.run()
    row = pair.message(pair.gp, message_id)
    assert row.status == "transport-acknowledged" and row.attempts == 2
    assert len(pair.inbound_messages(pair.hospital)) == 1
    [note] = _notes(pair, pair.gp, message_id)
    assert old[:16] in note and new[:16] in note and "MessageError" in note


def _replace_gp_encryption_certificate_at_the_hospital(pair: Pair) -> None:
    """The hospital's register names a new encryption certificate of the GP office (its old
    key still decrypts)."""
    her_id = "8198001"
    pki = init_pki(
        pair.gp_site.directory.parent / "pki",
        [her_id],
        organisation_numbers={her_id: organisation_number_for(GP_HER)},
    )
    new = pki.parties[her_id].encryption.certificate
    with pair.hospital.store.unit_of_work() as uow:
        row = uow.parties.get(GP_HER)
        assert row is not None
        party = dataclasses.replace(
            party_from_row(row),
            encryption_certificate=certificate_from_der(new.public_bytes(Encoding.DER)),
        )
        save_parties(uow, [party])
        uow.commit()


def test_an_apprec_queued_across_the_partners_rollover_is_sent(pair: Pair) -> None:
    # an AppRec given up could not be sent again (its message is answered already): it goes
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, SECRET), actor="t")
    pair.run()
    [received] = [m for m in pair.inbound_messages(pair.hospital) if m.msg_type != "APPREC"]
    receipts.deliver(pair.hospital, received.id, actor="epj")
    pair.network.down.add(pair.gp_site.endpoint)
    answer = receipts.send_apprec(pair.hospital, received.id, status=1, errors=[], actor="epj")
    pair.run()
    assert pair.message(pair.hospital, answer).status == "retrying"
    pair.network.down.clear()
    _replace_gp_encryption_certificate_at_the_hospital(pair)
    pair.clock.advance(minutes=11)
    pair.run()
    assert pair.message(pair.hospital, answer).status == "transport-acknowledged"
    assert pair.message(pair.gp, message_id).status == "apprec-ok"
    assert len(_notes(pair, pair.hospital, answer)) == 1


def test_a_message_stored_before_the_certificate_was_recorded_is_sent_as_before(
    pair: Pair,
) -> None:
    message_id = _queued(pair)
    with pair.gp.store.unit_of_work() as uow:
        uow.session.execute(
            update(MessageRow).where(MessageRow.id == message_id).values(encrypted_to_sha256=None)
        )
        uow.commit()
    _replace_hospital_encryption_certificate(pair)
    pair.clock.advance(minutes=11)
    pair.run()
    # the hospital still holds the old key: the old ciphertext is taken
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"


def test_a_queued_message_whose_type_is_no_longer_agreed_is_given_up(pair: Pair) -> None:
    message_id = _queued(pair)
    with pair.gp.store.unit_of_work() as uow:
        agreement = uow.agreements.for_pair("8100001", "8200002")
        assert agreement is not None
        agreement.message_types = [{"type": "DIALOG_FORESPORSEL", "versions": ["1.0"]}]
        uow.commit()
    pair.clock.advance(minutes=11)
    pair.run()
    summary = _given_up(pair, message_id, attempts=1)
    assert "DIALOG_NOTAT" in summary and "not agreed" in summary


def test_a_queued_message_whose_binding_the_agreement_no_longer_has_is_given_up(
    pair: Pair, reference_dir: Path
) -> None:
    # NAV's POM goes as BehandlerKrav/OppgjorsMelding, a binding chosen by the document's
    # namespace: the send finds it again by those names (not by the MsgHead type, POM)
    _with_nav_cpa(pair, reference_dir)
    pair.network.down.add(pair.hospital_site.endpoint)
    message_id = submit(pair.gp, _real_pom(pair, reference_dir), actor="t")
    pair.run()
    assert pair.message(pair.gp, message_id).status == "retrying"
    pair.network.down.clear()
    with pair.gp.store.unit_of_work() as uow:
        agreement = uow.agreements.for_pair("8100001", "8200002")
        assert agreement is not None
        agreement.message_types = [
            entry
            for entry in agreement.message_types
            if (entry.get("binding") or {}).get("action") != "OppgjorsMelding"
        ]
        uow.commit()
    _until_the_resend(pair)
    pair.run()
    summary = _given_up(pair, message_id, attempts=1)
    assert "no longer has the binding BehandlerKrav/OppgjorsMelding" in summary


def test_a_queued_message_goes_by_the_binding_its_document_chose(
    pair: Pair, reference_dir: Path
) -> None:
    _with_nav_cpa(pair, reference_dir)
    pair.network.down.add(pair.hospital_site.endpoint)
    message_id = submit(pair.gp, _real_pom(pair, reference_dir), actor="t")
    pair.run()
    pair.network.down.clear()
    _until_the_resend(pair)
    pair.run()
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"


def test_a_message_of_an_agreement_with_bindings_taking_any_type_goes_by_the_convention(
    pair: Pair, reference_dir: Path
) -> None:
    # `partners set --any-message-type` keeps a CPA's bindings: submit then names the envelope
    # by the convention (S-POM/POM), and the send takes it without looking for a binding
    _with_nav_cpa(pair, reference_dir)
    with pair.gp.store.unit_of_work() as uow:
        agreement = agreement_from_row(uow.agreements.for_pair("8100001", "8200002"))
        assert agreement.bindings
        save_agreement(uow, dataclasses.replace(agreement, message_types={}, any_message_type=True))
        uow.commit()
    message_id = submit(pair.gp, _real_pom(pair, reference_dir), actor="t")
    header = sent_header(pair, message_id)
    assert (header.service, header.action) == ("S-POM", "POM")
    pair.run()
    row = pair.message(pair.gp, message_id)
    assert row.status != "not-delivered" and row.attempts == 1
