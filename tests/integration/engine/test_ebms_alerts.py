"""What ``POST /ebms`` cannot take is alerted: the payload store failing, errors nobody
expected. The real application in-process (as test_large_streams does), real stores."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
from engine_pair import Pair
from fastapi.testclient import TestClient

from meldingstjener.api import app as api_app
from meldingstjener.devsites import dialog_note
from meldingstjener.engine import inbound
from meldingstjener.engine.context import EngineContext
from meldingstjener.engine.outbound import submit
from meldingstjener.formats import Attachment, Coded, Dialogmelding, Notat, build_dialogmelding

MiB = 1024 * 1024


def open_alerts(ctx: EngineContext) -> dict[str, tuple[str, int]]:
    with ctx.store.unit_of_work() as uow:
        return {a.dedup_key: (a.severity, a.count) for a in uow.alerts.list(open_only=True)}


def wire(pair: Pair, payload: bytes | None = None) -> tuple[bytes, str]:
    """A message from the GP to the hospital as it goes over the wire (kept from the network)."""
    pair.network.down.add(pair.hospital_site.endpoint)
    note = payload or dialog_note(pair.gp_site, pair.hospital_site, "x")
    row = pair.message(pair.gp, submit(pair.gp, note, actor="t"))
    pair.run()
    pair.network.down.clear()
    return pair.gp.store.payloads.read_bytes(str(row.wire_ref)), str(row.wire_content_type)


def large(pair: Pair) -> bytes:
    """A fagmelding whose wire form is spooled to the payload store as it arrives."""
    note = Notat(tema_kodet=Coded(v="1", dn="Helseopplysninger"), tekst="Skannet journal")
    return build_dialogmelding(
        message_type="DIALOG_NOTAT",
        sender=pair.gp_site.party(),
        receiver=pair.hospital_site.party(),
        dialog=Dialogmelding(version="1.0", notater=(note,)),
        attachments=(Attachment(data=os.urandom(2 * MiB), mime_type="application/pdf"),),
    )


@pytest.fixture
def http(pair: Pair) -> Iterator[TestClient]:
    with TestClient(api_app.create_app(pair.hospital)) as client:
        yield client


def test_a_payload_store_that_cannot_be_written_answers_503_with_a_critical_alert(
    pair: Pair, http: TestClient
) -> None:
    # The payload directory replaced by a file: every write under it fails (ENOTDIR), also
    # for root, as a full disk fails every write (ENOSPC). The database lives beside it.
    small, small_type = wire(pair)
    big, big_type = wire(pair, large(pair))
    root = pair.hospital.store.payloads.root
    shutil.rmtree(root)
    root.write_bytes(b"")
    answer = http.post("/ebms", content=small, headers={"Content-Type": small_type})
    assert answer.status_code == 503, answer.text
    answer = http.post("/ebms", content=big, headers={"Content-Type": big_type})
    assert answer.status_code == 503, answer.text  # failed while spooling the body
    assert open_alerts(pair.hospital) == {"store-failing:payloads": ("critical", 2)}
    with pair.hospital.store.unit_of_work() as uow:
        [alert] = uow.alerts.list(open_only=True)
    assert "ENOTDIR" in alert.summary
    assert pair.inbound_messages(pair.hospital) == []
    root.unlink()
    root.mkdir()
    answer = http.post("/ebms", content=small, headers={"Content-Type": small_type})
    assert answer.status_code == 200, answer.text  # the sender's resend
    assert [m.status for m in pair.inbound_messages(pair.hospital)] == ["acknowledged"]
    assert open_alerts(pair.hospital) == {}


def test_an_unexpected_error_answers_500_with_an_alert_that_names_its_class_only(
    pair: Pair, http: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fault in the server (injected here: a real one is not there to be found), whose text
    # quotes what was received.
    def faulty(*_args: object, **_kw: object) -> object:
        raise KeyError("Kari Nordmann")

    body, content_type = wire(pair)
    monkeypatch.setattr(inbound, "receive", faulty)
    answer = http.post("/ebms", content=body, headers={"Content-Type": content_type})
    assert answer.status_code == 500 and "Nordmann" not in answer.text
    assert open_alerts(pair.hospital) == {"ebms-failing:KeyError": ("error", 1)}
    with pair.hospital.store.unit_of_work() as uow:
        [alert] = uow.alerts.list(open_only=True)
    assert "Nordmann" not in alert.summary
