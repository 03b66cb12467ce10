"""A copy receiver (MsgHead OtherReceiver) is sent its copy when the EPJ names it."""

from __future__ import annotations

import pytest
from engine_pair import Pair, note_with_the_hospital_as_copy, sent_header

from meldingstjener.devsites import HOSPITAL_SERVICE_HER
from meldingstjener.engine.errors import SubmitRejected
from meldingstjener.engine.outbound import submit


def test_a_copy_receiver_named_by_the_epj_is_sent_its_copy(pair: Pair) -> None:
    message_id = submit(
        pair.gp, note_with_the_hospital_as_copy(pair), to_her_id=HOSPITAL_SERVICE_HER, actor="t"
    )
    assert sent_header(pair, message_id).to_party.her_id == HOSPITAL_SERVICE_HER
    pair.run()
    [row] = pair.inbound_messages(pair.hospital)
    assert row.to_her_id == HOSPITAL_SERVICE_HER
    assert row.receiver_org_her_id == "8300001"  # a copy: the MsgHead is addressed to another
    assert row.status not in ("rejected", "misaddressed-purged")
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"


def test_a_receiver_neither_addressed_nor_copied_is_still_refused(pair: Pair) -> None:
    with pytest.raises(SubmitRejected) as refused:
        submit(pair.gp, note_with_the_hospital_as_copy(pair), to_her_id="8300002", actor="t")
    assert refused.value.code == "inconsistent-addressing"
    assert "copies to 8200001, 8200002" in str(refused.value)
