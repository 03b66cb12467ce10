"""A receive whose request gave up on it (``POST /ebms`` answered 503 at a stop, the receive
still waiting for a database lock) is rolled back at its commit: nothing is stored, no event
says that the Acknowledgment was offered in a response that was a 503, and no file is left.
The sender's resend is then received as a new message."""

from __future__ import annotations

from pathlib import Path

import pytest
from engine_pair import Pair

from meldingstjener.devsites import dialog_note
from meldingstjener.engine import inbound
from meldingstjener.engine.outbound import submit


class _Answered503(Exception):
    pass


def _answered_503() -> None:
    raise _Answered503


def _files(root: Path) -> set[Path]:
    return {path for path in root.rglob("*") if path.is_file()}


def test_a_receive_given_up_before_its_commit_stores_nothing(pair: Pair) -> None:
    pair.network.down.add(pair.hospital_site.endpoint)  # the GP's send kept, not delivered
    submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    [delivery] = [d for d in pair.network.sent if d.endpoint == pair.hospital_site.endpoint]
    body = delivery.body if isinstance(delivery.body, bytes) else delivery.body.read_bytes()
    root = pair.hospital.store.payloads.root
    before = _files(root)
    with pytest.raises(_Answered503):
        inbound.receive(pair.hospital, delivery.content_type, body, before_commit=_answered_503)
    assert pair.inbound_messages(pair.hospital) == []
    assert _files(root) == before  # neither the decrypted content nor the signal's file
    # the resend: received as it came the first time
    inbound.receive(pair.hospital, delivery.content_type, body)
    [message] = pair.inbound_messages(pair.hospital)
    assert message.status == "acknowledged"
