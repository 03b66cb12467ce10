"""The onboarding routine's sends (DOMAIN.md, connecting a partner): in ``testing`` a test
message (MsgHead ProcessingStatus D, which ``send --test`` asks for) and an answer (our AppRec)
go, a production message does not; leaving testing needs a test message that got its Acknowledgment
and a positive AppRec, or the operator's words; a production message queued for an agreement
that is not active is held (not given up), and one for an ended agreement is given up at once."""

from __future__ import annotations

from dataclasses import replace

import pytest
from engine_pair import Pair
from sqlalchemy import delete, select

from meldingstjener.devsites import dialog_note
from meldingstjener.engine import receipts
from meldingstjener.engine.alerts import AlertKind
from meldingstjener.engine.errors import SubmitRejected
from meldingstjener.engine.outbound import submit
from meldingstjener.engine.receipts import AppRecRefused
from meldingstjener.engine.worker import Worker
from meldingstjener.formats.codelists import code_list
from meldingstjener.formats.dialog import Dialogmelding, Notat, dialog_msghead
from meldingstjener.formats.msghead import ConversationRef, build_msghead
from meldingstjener.formats.xmlutil import Coded
from meldingstjener.registry.agreements import (
    AgreementState,
    NotAgreed,
    check_state_change,
    log_state_change,
    verified_test_exchange,
)
from meldingstjener.registry.store import agreement_from_row, save_agreement
from meldingstjener.registry.terms import AgreedMessage, ChannelTerms
from meldingstjener.store.tables import EventRow, JobRow
from meldingstjener.store.uow import UnitOfWork

GP, HOSPITAL = "8100001", "8200002"
_THEMES = code_list("9152")
THEME = Coded(v="1", dn=_THEMES.text("1"), s=_THEMES.oid)


def _state(uow: UnitOfWork, theirs: str, state: str) -> None:
    """Every agreement of this side with ``theirs`` set to ``state``."""
    agreements = uow.agreements.for_counterparty(theirs)
    assert agreements
    for agreement in agreements:
        agreement.state = state


def _gp_agreement(pair: Pair, state: AgreementState) -> None:
    with pair.gp.store.unit_of_work() as uow:
        _state(uow, HOSPITAL, state.value)
        uow.commit()


def _note(pair: Pair, processing_status: str | None, *, from_hospital: bool = False) -> bytes:
    sender, receiver = pair.gp_site, pair.hospital_site
    if from_hospital:
        sender, receiver = receiver, sender
    head = dialog_msghead(
        message_type="DIALOG_NOTAT",
        sender=sender.party(),
        receiver=receiver.party(),
        dialog=Dialogmelding(
            version="1.0", notater=(Notat(tema_kodet=THEME, tekst="Testmelding"),)
        ),
    )
    status = None if processing_status is None else Coded(v=processing_status)
    return build_msghead(replace(head, msg_info=replace(head.msg_info, processing_status=status)))


def test_a_test_message_goes_under_testing_and_a_production_one_is_refused(pair: Pair) -> None:
    _gp_agreement(pair, AgreementState.TESTING)
    message_id = submit(pair.gp, _note(pair, "D"), actor="t")
    pair.run()
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"
    assert len(pair.inbound_messages(pair.hospital)) == 1
    with pytest.raises(SubmitRejected) as caught:
        submit(pair.gp, _note(pair, "P"), actor="t")
    assert caught.value.code == "agreement-not-active"
    assert "only test messages" in caught.value.message


def test_a_test_message_goes_under_verified_inactive_on_the_activation_date(pair: Pair) -> None:
    # step 5 of the routine: a test dialog message while verified-inactive, then activation
    _gp_agreement(pair, AgreementState.VERIFIED_INACTIVE)
    message_id = submit(pair.gp, _note(pair, "D"), actor="t")
    pair.run()
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"
    with pytest.raises(SubmitRejected) as caught:
        submit(pair.gp, _note(pair, "P"), actor="t")
    assert caught.value.code == "agreement-not-active"


def test_send_test_needs_a_msghead_that_says_it_is_a_test(pair: Pair) -> None:
    _gp_agreement(pair, AgreementState.TESTING)
    with pytest.raises(SubmitRejected):
        submit(pair.gp, _note(pair, None), actor="t")
    # nothing in the document would tell the partner's EPJ that it is a test
    for status, code in ((None, "test-message-not-marked"), ("P", "test-message-in-production")):
        with pytest.raises(SubmitRejected) as caught:
            submit(pair.gp, _note(pair, status), actor="t", test_message=True)
        assert caught.value.code == code
    assert pair.inbound_messages(pair.hospital) == []
    message_id = submit(pair.gp, _note(pair, "D"), actor="t", test_message=True)
    pair.run()
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"


@pytest.mark.parametrize("state", [AgreementState.TESTING, AgreementState.VERIFIED_INACTIVE])
def test_our_apprec_to_a_partner_in_onboarding_is_sent(pair: Pair, state: AgreementState) -> None:
    # the partner's test message comes in; our agreement with it is in testing: its test waits
    # for our positive AppRec
    submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "Test"), actor="t")
    pair.run()
    [received] = pair.inbound_messages(pair.hospital)
    with pair.hospital.store.unit_of_work() as uow:
        _state(uow, GP, state.value)
        uow.commit()
    answer = receipts.send_apprec(pair.hospital, received.id, status=1, errors=[], actor="epj")
    pair.run()
    assert pair.message(pair.hospital, answer).status == "transport-acknowledged"
    assert [m.msg_type for m in pair.inbound_messages(pair.gp)] == ["APPREC"]


def test_a_production_note_referring_to_a_received_message_is_no_answer(pair: Pair) -> None:
    # the partner's production note came in while active; then our agreement went to testing
    submit(pair.hospital, dialog_note(pair.hospital_site, pair.gp_site, "Spørsmål"), actor="t")
    pair.run()
    [received] = pair.inbound_messages(pair.gp)
    _gp_agreement(pair, AgreementState.TESTING)

    def reply(processing_status: str) -> bytes:
        head = dialog_msghead(
            message_type="DIALOG_NOTAT",
            sender=pair.gp_site.party(),
            receiver=pair.hospital_site.party(),
            dialog=Dialogmelding(version="1.0", notater=(Notat(tema_kodet=THEME, tekst="Svar"),)),
        )
        info = replace(
            head.msg_info,
            processing_status=Coded(v=processing_status),
            conversation_ref=ConversationRef(
                ref_to_parent=received.msg_id, ref_to_conversation=received.msg_id
            ),
        )
        return build_msghead(replace(head, msg_info=info))

    with pytest.raises(SubmitRejected) as caught:
        submit(pair.gp, reply("P"), actor="t")
    assert caught.value.code == "agreement-not-active"
    # a test answer goes, as a test message
    message_id = submit(pair.gp, reply("D"), actor="t")
    pair.run()
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"


def test_no_apprec_to_a_partner_whose_agreement_has_ended(pair: Pair) -> None:
    submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "Test"), actor="t")
    pair.run()
    [received] = pair.inbound_messages(pair.hospital)
    with pair.hospital.store.unit_of_work() as uow:
        _state(uow, GP, AgreementState.ENDED.value)
        uow.commit()
    with pytest.raises(AppRecRefused) as caught:
        receipts.send_apprec(pair.hospital, received.id, status=1, errors=[], actor="epj")
    assert caught.value.code == "agreement-not-active"


def test_verified_inactive_needs_a_verified_test_exchange(pair: Pair) -> None:
    _gp_agreement(pair, AgreementState.TESTING)
    testing, verified = AgreementState.TESTING, AgreementState.VERIFIED_INACTIVE
    with pair.gp.store.unit_of_work() as uow:
        assert verified_test_exchange(uow, GP, HOSPITAL) is None
    with pytest.raises(NotAgreed) as caught:
        check_state_change(testing, verified, verified_test=None)
    assert caught.value.code == "test-not-verified"

    message_id = submit(pair.gp, _note(pair, "D"), actor="t")
    pair.run()
    with pair.gp.store.unit_of_work() as uow:
        # acknowledged, but no AppRec yet: not verified
        assert verified_test_exchange(uow, GP, HOSPITAL) is None
    [received] = pair.inbound_messages(pair.hospital)
    receipts.send_apprec(pair.hospital, received.id, status=1, errors=[], actor="epj")
    pair.run()
    assert pair.message(pair.gp, message_id).status == "apprec-ok"
    with pair.gp.store.unit_of_work() as uow:
        found = verified_test_exchange(uow, GP, HOSPITAL)
        assert found == message_id
        assert check_state_change(testing, verified, verified_test=found) is verified
        log_state_change(uow, GP, HOSPITAL, testing, verified, actor="cli", verified_test=found)
        uow.commit()
    with pair.gp.store.unit_of_work() as uow:
        codes = [e.code for e in uow.events.for_message(message_id)]
    assert "test-message" in codes and "agreement-verified" in codes


def test_a_new_round_of_testing_needs_a_new_test_exchange(pair: Pair) -> None:
    testing, suspended = AgreementState.TESTING, AgreementState.SUSPENDED
    _gp_agreement(pair, testing)
    old = submit(pair.gp, _note(pair, "D"), actor="t")
    pair.run()
    [received] = pair.inbound_messages(pair.hospital)
    receipts.send_apprec(pair.hospital, received.id, status=1, errors=[], actor="epj")
    pair.run()
    with pair.gp.store.unit_of_work() as uow:
        assert verified_test_exchange(uow, GP, HOSPITAL) == old
    # a year on, active then suspended, the partner has a new certificate: back to testing
    pair.clock.advance(days=400)
    with pair.gp.store.unit_of_work() as uow:
        _state(uow, HOSPITAL, testing.value)
        log_state_change(uow, GP, HOSPITAL, suspended, testing, actor="cli", at=pair.clock())
        uow.commit()
    with pair.gp.store.unit_of_work() as uow:
        assert verified_test_exchange(uow, GP, HOSPITAL) is None
    pair.clock.advance(minutes=1)
    new = submit(pair.gp, _note(pair, "D"), actor="t")
    pair.run()
    received = next(m for m in pair.inbound_messages(pair.hospital) if m.id != received.id)
    receipts.send_apprec(pair.hospital, received.id, status=1, errors=[], actor="epj")
    pair.run()
    with pair.gp.store.unit_of_work() as uow:
        assert verified_test_exchange(uow, GP, HOSPITAL) == new


def test_a_test_message_from_our_service_verifies_our_organisations_agreement(
    pair: Pair,
) -> None:
    # the hospital sends from its service HER-id; its agreement is its organisation's
    with pair.hospital.store.unit_of_work() as uow:
        _state(uow, GP, AgreementState.TESTING.value)
        [agreement] = uow.agreements.for_counterparty(GP)
        ours = agreement.our_her_id
        uow.commit()
    message_id = submit(pair.hospital, _note(pair, "D", from_hospital=True), actor="t")
    pair.run()
    [received] = pair.inbound_messages(pair.gp)
    receipts.send_apprec(pair.gp, received.id, status=1, errors=[], actor="epj")
    pair.run()
    row = pair.message(pair.hospital, message_id)
    assert row.status == "apprec-ok" and row.from_her_id != ours
    with pair.hospital.store.unit_of_work() as uow:
        assert verified_test_exchange(uow, ours, GP) == message_id
        assert verified_test_exchange(uow, str(row.from_her_id), GP) is None


def test_a_test_message_sent_without_ack_requested_is_verified_by_its_apprec(
    pair: Pair,
) -> None:
    # the CPA binds the note to a channel with ackRequested never: no Acknowledgment comes
    with pair.gp.store.unit_of_work() as uow:
        row = uow.agreements.for_pair(GP, HOSPITAL)
        assert row is not None
        channel = ChannelTerms(None, "http", pair.hospital_site.endpoint, ack_requested="never")
        note = AgreedMessage("DIALOG_NOTAT", "S-DIALOG_NOTAT", (), channel=channel)
        bound = replace(
            agreement_from_row(row),
            state=AgreementState.TESTING,
            bindings=(note,),
            any_message_type=False,
            message_types={"DIALOG_NOTAT": ("1.0",)},
        )
        save_agreement(uow, bound)
        uow.commit()
    message_id = submit(pair.gp, _note(pair, "D"), actor="t")
    Worker(pair.gp, "gp").run_until_idle()
    with pair.hospital.store.unit_of_work() as uow:  # as a gateway that sends none
        uow.session.execute(delete(JobRow).where(JobRow.kind == "send-signal"))
        uow.commit()
    assert pair.message(pair.gp, message_id).status == "sent"
    [received] = pair.inbound_messages(pair.hospital)
    receipts.send_apprec(pair.hospital, received.id, status=1, errors=[], actor="epj")
    pair.run()
    assert pair.message(pair.gp, message_id).status == "apprec-ok"
    with pair.gp.store.unit_of_work() as uow:
        assert verified_test_exchange(uow, GP, HOSPITAL) == message_id


def test_a_production_message_does_not_verify_and_a_forced_change_is_logged(
    pair: Pair,
) -> None:
    # a production message sent while active, acknowledged and answered Ok, is no test
    submit(pair.gp, _note(pair, "P"), actor="t")
    pair.run()
    [received] = pair.inbound_messages(pair.hospital)
    receipts.send_apprec(pair.hospital, received.id, status=1, errors=[], actor="epj")
    pair.run()
    _gp_agreement(pair, AgreementState.TESTING)
    testing, verified = AgreementState.TESTING, AgreementState.VERIFIED_INACTIVE
    with pair.gp.store.unit_of_work() as uow:
        assert verified_test_exchange(uow, GP, HOSPITAL) is None
        words = "tested by phone with the partner's help desk"
        assert check_state_change(testing, verified, forced=words) is verified
        log_state_change(uow, GP, HOSPITAL, testing, verified, actor="cli", forced=words)
        uow.commit()
    with pair.gp.store.unit_of_work() as uow:
        forced = list(
            uow.session.scalars(select(EventRow).where(EventRow.code == "agreement-forced"))
        )
    assert len(forced) == 1 and words in str(forced[0].detail)


def _queued(pair: Pair) -> str:
    pair.network.down.add(pair.hospital_site.endpoint)
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "Notat"), actor="t")
    pair.run()
    assert pair.message(pair.gp, message_id).status == "retrying"
    pair.network.down.clear()
    return message_id


def test_a_suspended_agreement_sent_back_to_testing_holds_a_queued_message_until_active(
    pair: Pair,
) -> None:
    message_id = _queued(pair)
    _gp_agreement(pair, AgreementState.SUSPENDED)
    pair.clock.advance(minutes=11)
    pair.run()
    assert pair.message(pair.gp, message_id).status == "retrying"
    # a new certificate: back to testing, as the routine names it; the message waits
    _gp_agreement(pair, AgreementState.TESTING)
    for _ in range(2):
        pair.clock.advance(minutes=11)
        pair.run()
        row = pair.message(pair.gp, message_id)
        assert row.status == "retrying" and row.attempts == 1  # held, no Retry used
        assert pair.inbound_messages(pair.hospital) == []
    with pair.gp.store.unit_of_work() as uow:
        codes = [e.code for e in uow.events.for_message(message_id)]
        assert uow.alerts.list(open_only=True, kind=AlertKind.NOT_DELIVERED) == []
    assert "agreement-not-active" in codes
    _gp_agreement(pair, AgreementState.ACTIVE)
    pair.clock.advance(minutes=11)
    pair.run()
    row = pair.message(pair.gp, message_id)
    assert row.status == "transport-acknowledged" and row.attempts == 2


def test_an_ended_agreement_gives_a_queued_message_up_at_once_and_refuses_submits(
    pair: Pair,
) -> None:
    message_id = _queued(pair)
    _gp_agreement(pair, AgreementState.ENDED)
    pair.clock.advance(minutes=11)
    pair.run()
    row = pair.message(pair.gp, message_id)
    assert row.status == "not-delivered" and row.attempts == 1
    with pair.gp.store.unit_of_work() as uow:
        [alert] = [
            a
            for a in uow.alerts.list(open_only=True, kind=AlertKind.NOT_DELIVERED)
            if a.message_id == message_id
        ]
    assert "has ended" in str(alert.summary)
    with pytest.raises(SubmitRejected) as caught:
        submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "Notat"), actor="t")
    assert caught.value.code == "agreement-not-active" and "ended" in caught.value.message
    for state in AgreementState:
        if state is not AgreementState.ORDERED:  # back to the routine's start, only forced
            with pytest.raises(NotAgreed):
                check_state_change(AgreementState.ENDED, state, forced="any words")
