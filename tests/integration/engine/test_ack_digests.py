"""A partner's Acknowledgment proves the receipt of what we sent only when its ds:Reference
digests are the ones we signed: one that contradicts them acknowledges something else and
changes nothing; one with no digest of ours (none, or the envelope's ``URI=""`` alone, as NAV's
partners send) is taken as before, with a note."""

from __future__ import annotations

from pathlib import Path

from engine_pair import Pair
from lxml import etree

from meldingstjener.devsites import dialog_note
from meldingstjener.ebxml import package, parse_envelope, unpackage
from meldingstjener.ebxml.codes import DS_NS, EB_NS
from meldingstjener.engine import inbound, signals
from meldingstjener.engine.outbound import submit
from meldingstjener.engine.worker import Worker
from meldingstjener.formats.xmlparse import parse_xml
from meldingstjener.security.xmldsig import sign_ebxml_envelope
from meldingstjener.store.tables import EventRow


def _sent(pair: Pair) -> str:
    """A note the GP office sent: the hospital has it, its Acknowledgment has not come back
    (the GP's endpoint is down for the hospital's signal job, which is left unrun)."""
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    Worker(pair.gp, "gp").run_until_idle()
    assert pair.message(pair.gp, message_id).status == "sent"
    return message_id


def _sent_envelope(pair: Pair, message_id: str) -> etree._Element:
    """The envelope the GP signed and sent, as its stored wire form has it."""
    sent = pair.message(pair.gp, message_id)
    mime = unpackage(str(sent.wire_content_type), pair.gp.store.payloads.path(str(sent.wire_ref)))
    return parse_xml(mime.envelope_xml)


def _ack_with_signed_info(pair: Pair, original: etree._Element) -> signals.SignalWire:
    """The hospital's Acknowledgment (signed with its key) carrying the references of
    ``original``'s signature as they are now."""
    return signals.build_ack(pair.hospital, parse_envelope(original), original)


def _digest_nodes(root: etree._Element) -> dict[str, etree._Element]:
    """Each DigestValue of the envelope's SignedInfo, by its Reference's URI."""
    return {
        str(ref.get("URI")): ref.find(f"{{{DS_NS}}}DigestValue")
        for ref in root.iter(f"{{{DS_NS}}}Reference")
    }


def _events(pair: Pair, message_id: str) -> list[EventRow]:
    with pair.gp.store.unit_of_work() as uow:
        return uow.events.for_message(message_id)


def _open_alerts(pair: Pair) -> dict[str, str]:
    with pair.gp.store.unit_of_work() as uow:
        return {a.dedup_key: a.summary for a in uow.alerts.list(open_only=True)}


def _receipt_kinds(pair: Pair, message_id: str) -> list[str]:
    with pair.gp.store.unit_of_work() as uow:
        return [r.kind for r in uow.receipts.for_message(message_id)]


def _job_kinds(pair: Pair) -> list[str]:
    from sqlalchemy import select

    from meldingstjener.store.tables import JobRow

    with pair.gp.store.unit_of_work() as uow:
        return sorted(uow.session.scalars(select(JobRow.kind)))


def test_an_acknowledgment_with_our_digests_is_taken_without_a_note(pair: Pair) -> None:
    message_id = _sent(pair)
    wire = _ack_with_signed_info(pair, _sent_envelope(pair, message_id))
    inbound.receive(pair.gp, wire.content_type, wire.body)
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"
    codes = [e.code for e in _events(pair, message_id)]
    assert "ack-without-digests" not in codes and "ack-digest-mismatch" not in codes


def test_an_acknowledgment_whose_payload_digest_is_not_ours_changes_nothing(
    pair: Pair,
) -> None:
    message_id = _sent(pair)
    original = _sent_envelope(pair, message_id)
    [cid] = [uri for uri in _digest_nodes(original) if uri.startswith("cid:")]
    _digest_nodes(original)[cid].text = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
    wire = _ack_with_signed_info(pair, original)

    inbound.receive(pair.gp, wire.content_type, wire.body)

    assert pair.message(pair.gp, message_id).status == "sent"  # waits, resent when due
    assert _receipt_kinds(pair, message_id) == []
    assert "ack-timeout" in _job_kinds(pair)
    [refused] = [e for e in _events(pair, message_id) if e.code == "ack-digest-mismatch"]
    assert cid in str(refused.detail) and refused.ebxml_message_id == wire.message_id
    alert = _open_alerts(pair)[f"signal-untrusted:8200002:{message_id}"]
    assert f"message {message_id}" in alert and "not the one we signed" in alert
    # the true Acknowledgment still counts, and ends the alert
    wire = _ack_with_signed_info(pair, _sent_envelope(pair, message_id))
    inbound.receive(pair.gp, wire.content_type, wire.body)
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"
    assert _open_alerts(pair) == {}


def test_a_digest_alert_is_ended_only_by_that_message_s_acknowledgment(pair: Pair) -> None:
    # the partner's good Acknowledgment of another message says nothing of this one
    first = _sent(pair)
    original = _sent_envelope(pair, first)
    _digest_nodes(original)[""].text = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
    wire = _ack_with_signed_info(pair, original)
    inbound.receive(pair.gp, wire.content_type, wire.body)
    second = _sent(pair)
    wire = _ack_with_signed_info(pair, _sent_envelope(pair, second))
    inbound.receive(pair.gp, wire.content_type, wire.body)
    assert pair.message(pair.gp, second).status == "transport-acknowledged"
    assert pair.message(pair.gp, first).status == "sent"
    assert list(_open_alerts(pair)) == [f"signal-untrusted:8200002:{first}"]
    wire = _ack_with_signed_info(pair, _sent_envelope(pair, first))
    inbound.receive(pair.gp, wire.content_type, wire.body)
    assert _open_alerts(pair) == {}


def test_an_acknowledgment_whose_digest_method_is_not_ours_is_taken_with_a_note(
    pair: Pair,
) -> None:
    # a partner MSH computing the digests itself with sha1: not comparable, so no proof that
    # it received something else; ignoring it would resend the message until it is given up
    message_id = _sent(pair)
    original = _sent_envelope(pair, message_id)
    for method in original.iter(f"{{{DS_NS}}}DigestMethod"):
        method.set("Algorithm", "http://www.w3.org/2000/09/xmldsig#sha1")
    for value in _digest_nodes(original).values():
        value.text = "AAAAAAAAAAAAAAAAAAAAAAAAAAA="
    wire = _ack_with_signed_info(pair, original)
    inbound.receive(pair.gp, wire.content_type, wire.body)
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"
    codes = [e.code for e in _events(pair, message_id)]
    assert "ack-digest-mismatch" not in codes
    [note] = [e for e in _events(pair, message_id) if e.code == "ack-without-digests"]
    assert "not comparable" in str(note.detail) and _open_alerts(pair) == {}


def test_an_acknowledgment_writing_our_cid_otherwise_proves_the_payload(pair: Pair) -> None:
    message_id = _sent(pair)
    original = _sent_envelope(pair, message_id)
    for ref in original.iter(f"{{{DS_NS}}}Reference"):
        uri = str(ref.get("URI"))
        if uri.startswith("cid:"):
            ref.set("URI", f"cid:%3C{uri[4:]}%3E")
    wire = _ack_with_signed_info(pair, original)
    inbound.receive(pair.gp, wire.content_type, wire.body)
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"
    assert "ack-without-digests" not in [e.code for e in _events(pair, message_id)]


def test_an_acknowledgment_of_another_envelope_changes_nothing(pair: Pair) -> None:
    message_id = _sent(pair)
    original = _sent_envelope(pair, message_id)
    _digest_nodes(original)[""].text = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
    wire = _ack_with_signed_info(pair, original)
    inbound.receive(pair.gp, wire.content_type, wire.body)
    assert pair.message(pair.gp, message_id).status == "sent"
    [refused] = [e for e in _events(pair, message_id) if e.code == "ack-digest-mismatch"]
    assert 'digest of ""' in str(refused.detail)


def test_a_reference_we_did_not_sign_is_no_contradiction(pair: Pair) -> None:
    # a URI none of our references has says nothing of ours: taken, noted as proving no part
    message_id = _sent(pair)
    original = _sent_envelope(pair, message_id)
    for ref in original.iter(f"{{{DS_NS}}}Reference"):
        ref.set("URI", "cid:made-up@elsewhere")
    wire = _ack_with_signed_info(pair, original)
    inbound.receive(pair.gp, wire.content_type, wire.body)
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"
    [note] = [e for e in _events(pair, message_id) if e.code == "ack-without-digests"]
    assert "no digest of what we sent" in str(note.detail)


# --- NAV's sample: a partner's Acknowledgment with the envelope's reference only --------------


def _nav_acknowledgment(
    pair: Pair, reference_dir: Path, message_id: str, digest: str | None
) -> tuple[str, bytes]:
    """NAV's sample Acknowledgment readdressed as the hospital's of our message and signed
    with the hospital's key; its one ds:Reference (URI="") carries ``digest``, or is left out
    (None). Its Content-Type and body."""
    data = (reference_dir / "samples/ebxml/nav-acknowledgment.xml").read_bytes()
    root = etree.fromstring(data)
    ebxml_id = str(pair.message(pair.gp, message_id).ebxml_message_id)
    for ref_to in root.iter(f"{{{EB_NS}}}RefToMessageId"):
        ref_to.text = ebxml_id
    for side, her_id in (("From", "8200002"), ("To", "8100001")):
        party = root.find(f".//{{{EB_NS}}}MessageHeader/{{{EB_NS}}}{side}")
        assert party is not None
        for extra in party.findall(f"{{{EB_NS}}}PartyId")[1:]:
            party.remove(extra)
        party.find(f"{{{EB_NS}}}PartyId").text = her_id  # type: ignore[union-attr]
    header = root.find("{http://schemas.xmlsoap.org/soap/envelope/}Header")
    assert header is not None
    header.remove(header.find(f"{{{DS_NS}}}Signature"))  # a placeholder: signed below
    acknowledgment = header.find(f"{{{EB_NS}}}Acknowledgment")
    assert acknowledgment is not None
    [reference] = acknowledgment.findall(f"{{{DS_NS}}}Reference")
    assert reference.get("URI") == ""
    if digest is None:
        acknowledgment.remove(reference)
    else:
        reference.find(f"{{{DS_NS}}}DigestValue").text = digest  # type: ignore[union-attr]
    sign_ebxml_envelope(
        root, {}, pair.hospital.keys.signing_key, pair.hospital.keys.signing_certificate
    )
    body, content_type = package(etree.tostring(root), [], transfer_encoding="binary")
    return content_type, body


def test_nav_s_acknowledgment_with_our_envelope_digest_is_taken_with_a_note(
    pair: Pair, reference_dir: Path
) -> None:
    message_id = _sent(pair)
    ours = _digest_nodes(_sent_envelope(pair, message_id))[""].text
    inbound.receive(pair.gp, *_nav_acknowledgment(pair, reference_dir, message_id, ours))
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"
    [note] = [e for e in _events(pair, message_id) if e.code == "ack-without-digests"]
    assert "digest of our envelope only" in str(note.detail)
    assert _open_alerts(pair) == {}


def test_an_acknowledgment_without_references_is_taken_with_a_note(
    pair: Pair, reference_dir: Path
) -> None:
    message_id = _sent(pair)
    inbound.receive(pair.gp, *_nav_acknowledgment(pair, reference_dir, message_id, None))
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"
    [note] = [e for e in _events(pair, message_id) if e.code == "ack-without-digests"]
    assert "no digest of what we sent" in str(note.detail)


def test_nav_s_acknowledgment_with_another_envelope_digest_changes_nothing(
    pair: Pair, reference_dir: Path
) -> None:
    # the sample's own DigestValue is a placeholder ("digestValue"): no digest of ours
    message_id = _sent(pair)
    inbound.receive(pair.gp, *_nav_acknowledgment(pair, reference_dir, message_id, "digestValue"))
    assert pair.message(pair.gp, message_id).status == "sent"
    [refused] = [e for e in _events(pair, message_id) if e.code == "ack-digest-mismatch"]
    assert 'digest of ""' in str(refused.detail)
    assert f"signal-untrusted:8200002:{message_id}" in _open_alerts(pair)
