"""A CPA that does not follow the S-<type> convention (NAV's) names the envelope: a real POM
goes as BehandlerKrav/OppgjorsMelding between Behandler and KontrollUtbetaler, and the AppRec
answering it as NAV's Svarmelding in the same service.

The two engines of ``engine_pair`` play the CPA's parties: the GP office is the Behandler
(8141253 in the CPA), the hospital's service NAV (79768); the agreements are the CPA's, seen
from each side, with the HER-ids and endpoints of the pair.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path

from engine_pair import Pair, sent_header
from sqlalchemy import select

from meldingstjener.devsites import dialog_note
from meldingstjener.ebxml import Envelope, parse_envelope, unpackage
from meldingstjener.engine import receipts
from meldingstjener.engine.alerts import AlertKind, raise_alert
from meldingstjener.engine.outbound import submit
from meldingstjener.engine.worker import Worker
from meldingstjener.formats.xmlparse import parse_xml
from meldingstjener.registry.agreements import AgreementState, PartnerAgreement
from meldingstjener.registry.cpa import agreement_for, parse_cpa
from meldingstjener.registry.store import agreement_from_row, save_agreement
from meldingstjener.registry.terms import ChannelTerms
from meldingstjener.store.tables import AlertRow, JobRow
from meldingstjener.transport.base import Delivery, Transport, TransportFailure, TransportResult

REAL_MAIL = "samples/ebxml/real-smtp-mail/2023_08_29T12_56_58_328.p7m.deenveloped.ungz"
CPA_BEHANDLER, CPA_NAV = "8141253", "79768"


def _cpa_agreement(
    reference_dir: Path, name: str, cpa_ours: str, ours: str, theirs: str, endpoint: str
) -> PartnerAgreement:
    """The CPA's agreement seen from ``cpa_ours``, moved to the pair's HER-ids; each binding's
    channel keeps its settings and goes over the loopback's HTTP to ``endpoint``."""
    cpa = parse_cpa((reference_dir / "samples" / "cpa" / name).read_bytes())
    agreement = PartnerAgreement.from_terms(
        agreement_for(cpa, cpa_ours), state=AgreementState.ACTIVE
    )
    bindings = tuple(
        replace(b, channel=replace(b.channel, transport="http", endpoint=endpoint))
        if b.channel is not None
        else b
        for b in agreement.bindings
    )
    return replace(
        agreement,
        our_her_id=ours,
        counterparty_her_id=theirs,
        channel="http",
        endpoint=endpoint,
        bindings=bindings,
        retries=3,
        valid_to=None,  # the samples' end is not this test's concern
    )


def _with_nav_cpa(pair: Pair, reference_dir: Path) -> None:
    gp, nav = pair.gp_site.address_her_id, pair.hospital_site.address_her_id
    with pair.gp.store.unit_of_work() as uow:
        save_agreement(
            uow,
            _cpa_agreement(
                reference_dir,
                "nav-qass-35065.xml",
                CPA_BEHANDLER,
                gp,
                nav,
                pair.hospital_site.endpoint,
            ),
        )
        uow.commit()
    with pair.hospital.store.unit_of_work() as uow:
        save_agreement(
            uow,
            _cpa_agreement(
                reference_dir, "nav-qass-35065.xml", CPA_NAV, nav, gp, pair.gp_site.endpoint
            ),
        )
        uow.commit()


def _real_pom(pair: Pair, reference_dir: Path) -> bytes:
    """The real mail's business document, from the GP to the hospital's service."""
    document = (reference_dir / REAL_MAIL).read_bytes()
    gp, nav = pair.gp_site.address_her_id, pair.hospital_site.address_her_id
    return document.replace(
        f"<Id>{CPA_BEHANDLER}</Id>".encode(), f"<Id>{gp}</Id>".encode()
    ).replace(f"<Id>{CPA_NAV}</Id>".encode(), f"<Id>{nav}</Id>".encode())


def test_a_real_pom_goes_by_navs_names_and_its_apprec_by_navs_svarmelding(
    pair: Pair, reference_dir: Path
) -> None:
    _with_nav_cpa(pair, reference_dir)
    message_id = submit(pair.gp, _real_pom(pair, reference_dir), actor="test")
    header = sent_header(pair, message_id)
    assert (header.service, header.service_type, header.action) == (
        "BehandlerKrav",
        "string",
        "OppgjorsMelding",
    )
    assert (header.from_party.role, header.to_party.role) == ("Behandler", "KontrollUtbetaler")
    assert header.cpa_id == "nav:qass:35065"
    pair.run()
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"
    [received] = pair.inbound_messages(pair.hospital)
    assert (received.msg_type, received.ebxml_service) == ("POM", "BehandlerKrav")
    answer_id = receipts.send_apprec(
        pair.hospital, received.id, status=1, errors=[], actor="epj:test"
    )
    with pair.hospital.store.unit_of_work() as uow:
        answer = uow.messages.get(answer_id)
        assert answer is not None
        assert (answer.ebxml_service, answer.ebxml_action) == ("BehandlerKrav", "Svarmelding")
    pair.run()
    assert pair.message(pair.gp, message_id).status == "apprec-ok"


@dataclass
class _Recorder:
    """A transport that takes every delivery and answers nothing."""

    sent: list[Delivery] = field(default_factory=list)

    def send(self, delivery: Delivery) -> TransportResult:
        self.sent.append(delivery)
        return TransportResult(status_code=200)

    def close(self) -> None:
        pass


def _sent_envelope(pair: Pair, message_id: str) -> Envelope:
    sent = pair.message(pair.gp, message_id)
    mime = unpackage(str(sent.wire_content_type), pair.gp.store.payloads.path(str(sent.wire_ref)))
    return parse_envelope(parse_xml(mime.envelope_xml))


def _channel_per_action(
    pair: Pair, reference_dir: Path, http: Transport, smtp: Transport
) -> tuple[bytes, bytes]:
    """The GP's agreement with the hospital is nav-qass-31162's, whose channels go by ``http``
    and ``smtp``: the documents of an EgenandelForesporsel (HTTPS to NAV's gateway, without
    AckRequested) and of an Oppgjorskrav (SMTP, with AckRequested)."""
    gp, nav = pair.gp_site.address_her_id, pair.hospital_site.address_her_id
    cpa = parse_cpa((reference_dir / "samples" / "cpa" / "nav-qass-31162.xml").read_bytes())
    agreement = PartnerAgreement.from_terms(
        agreement_for(cpa, "8090595"), state=AgreementState.ACTIVE
    )
    with pair.gp.store.unit_of_work() as uow:
        save_agreement(
            uow, replace(agreement, our_her_id=gp, counterparty_her_id=nav, valid_to=None)
        )
        uow.commit()
    pair.gp.transports = {"http": http, "smtp": smtp}
    pom = _real_pom(pair, reference_dir)
    bkm = b"http://www.kith.no/xmlstds/bkm/2006-12-20"
    return (
        pom.replace(bkm, b"http://www.kith.no/xmlstds/nav/egenandel/2010-02-01"),
        pom.replace(bkm, b"http://www.kith.no/xmlstds/eresept/m18/2013-04-16"),
    )


def _open_alerts(pair: Pair) -> list[AlertRow]:
    with pair.gp.store.unit_of_work() as uow:
        return list(uow.alerts.list(open_only=True))


def test_a_cpa_that_binds_a_channel_per_action_sends_each_message_by_its_own(
    pair: Pair, reference_dir: Path
) -> None:
    """nav-qass-31162 puts EgenandelForesporsel on HTTPS to NAV's gateway, without
    AckRequested and with a synchronous answer, and Oppgjorskrav on SMTP with one."""
    http, smtp = _Recorder(), _Recorder()
    question_document, claim_document = _channel_per_action(pair, reference_dir, http, smtp)
    question = submit(pair.gp, question_document, actor="t")
    claim = submit(pair.gp, claim_document, actor="t")
    envelope = _sent_envelope(pair, question)
    assert (envelope.header.service, envelope.header.action) == (
        "HarBorgerEgenandelFritak",
        "EgenandelForesporsel",
    )
    assert (envelope.header.from_party.role, envelope.header.to_party.role) == (
        "Utleverer",
        "Frikortregister",
    )
    assert (envelope.ack_requested, envelope.sync_reply, envelope.duplicate_elimination) == (
        False,
        True,
        False,
    )
    assert pair.message(pair.gp, question).channel == "http"
    envelope = _sent_envelope(pair, claim)
    assert (envelope.header.service, envelope.header.action) == ("OppgjorsKontroll", "Oppgjorskrav")
    assert (envelope.ack_requested, envelope.sync_reply) == (True, False)
    assert pair.message(pair.gp, claim).channel == "smtp"
    Worker(pair.gp, "gp").run_until_idle()
    assert [d.endpoint for d in http.sent] == ["https://nhn-gw-q.nav.no:9443/ebxml/msh"]
    assert [d.endpoint for d in smtp.sent] == ["mottak-qass@test-es.nav.no"]
    # no Acknowledgment was asked for the question: none is waited for, nothing is resent
    with pair.gp.store.unit_of_work() as uow:
        waits = list(
            uow.session.scalars(select(JobRow.message_id).where(JobRow.kind == "ack-timeout"))
        )
    assert waits == [claim]
    assert pair.message(pair.gp, question).status == "sent"


def test_a_question_without_ack_requested_whose_answer_never_comes_is_alerted(
    pair: Pair, reference_dir: Path
) -> None:
    """The gateway takes the question (HTTP 200) and answers nothing: the AppRec deadline
    counts from the send, and its alert says so. It used to stay sent for ever, unalerted."""
    question_document, _ = _channel_per_action(pair, reference_dir, _Recorder(), _Recorder())
    question = submit(pair.gp, question_document, actor="t")
    pair.run()
    assert pair.message(pair.gp, question).status == "sent"
    assert _open_alerts(pair) == []
    pair.clock.advance(hours=pair.gp.policy.apprec_deadline("POM") / timedelta(hours=1) + 1)
    pair.run()
    [alert] = _open_alerts(pair)
    assert (alert.kind, alert.message_id) == ("apprec-missing", question)
    assert "after it was sent" in alert.summary and "no transport receipt" in alert.summary
    assert pair.message(pair.gp, question).status == "sent"


@dataclass
class _Down:
    """A transport whose every send fails for a while: the partner's endpoint is down."""

    def send(self, delivery: Delivery) -> TransportResult:
        raise TransportFailure("connect-failed", f"cannot reach {delivery.endpoint}")

    def close(self) -> None:
        pass


def test_a_send_by_another_channel_of_the_partner_leaves_the_unreachable_alert_open(
    pair: Pair, reference_dir: Path
) -> None:
    """HTTPS to NAV's gateway is down, SMTP works: a claim that goes by mail does not resolve
    the alert naming the gateway (keyed per partner, it flipped at every retry); a send that
    works by the gateway does."""
    question_document, claim_document = _channel_per_action(
        pair, reference_dir, _Down(), _Recorder()
    )
    question = submit(pair.gp, question_document, actor="t")
    pair.run()
    assert pair.message(pair.gp, question).status == "retrying"
    [alert] = _open_alerts(pair)
    assert alert.kind == "partner-unreachable" and "nhn-gw-q.nav.no" in alert.summary
    claim = submit(pair.gp, claim_document, actor="t")
    pair.run()
    assert pair.message(pair.gp, claim).status == "sent"
    assert [a.id for a in _open_alerts(pair)] == [alert.id]
    pair.gp.transports["http"] = _Recorder()
    pair.clock.advance(hours=4, minutes=1)  # the CPA's RetryInterval, PT240M
    pair.run()
    assert pair.message(pair.gp, question).status == "sent"
    assert "partner-unreachable" not in {a.kind for a in _open_alerts(pair)}


def test_a_send_that_works_resolves_an_unreachable_alert_keyed_per_partner(
    pair: Pair, reference_dir: Path
) -> None:
    """An alert an earlier version stored per partner (its key without the endpoint) is
    resolved by the next send that works to that partner, not left open for ever."""
    with pair.gp.store.unit_of_work() as uow:
        raise_alert(
            uow,
            AlertKind.PARTNER_UNREACHABLE,
            "8200002 (Sykehuset Demo HF) cannot be reached at https://nhn-gw-q.nav.no",
            at=pair.clock(),
            partner_her_id=pair.hospital_site.address_her_id,
        )
        uow.commit()
    _, claim_document = _channel_per_action(pair, reference_dir, _Recorder(), _Recorder())
    submit(pair.gp, claim_document, actor="t")
    pair.run()
    assert _open_alerts(pair) == []


def test_a_binding_whose_channel_cannot_be_used_goes_by_the_agreements_channel_and_flags(
    pair: Pair, reference_dir: Path
) -> None:
    """A binding on a transport this server does not have, without AckRequested, goes by the
    agreement's channel with that channel's flags: the envelope asks for the Acknowledgment the
    send waits for (it once went without, and was resent until given up as ack-missing)."""
    _with_nav_cpa(pair, reference_dir)
    with pair.gp.store.unit_of_work() as uow:
        agreement = agreement_from_row(uow.agreements.for_pair("8100001", "8200002"))
        other = ChannelTerms("ftp", "other", "ftp://nav.example/ebxml", ack_requested="never")
        bindings = tuple(
            replace(b, channel=other) if b.message_type == "OppgjorsMelding" else b
            for b in agreement.bindings
        )
        save_agreement(uow, replace(agreement, bindings=bindings))
        uow.commit()
    message_id = submit(pair.gp, _real_pom(pair, reference_dir), actor="t")
    envelope = _sent_envelope(pair, message_id)
    assert (envelope.header.service, envelope.header.action) == ("BehandlerKrav", "OppgjorsMelding")
    assert envelope.ack_requested and envelope.duplicate_elimination
    pair.run()
    for _ in range(3):  # past the RetryInterval, twice: nothing is resent
        pair.clock.advance(minutes=11)
        pair.run()
    row = pair.message(pair.gp, message_id)
    assert row.status == "transport-acknowledged" and row.attempts == 1
    assert row.sent_endpoint == pair.hospital_site.endpoint
    with pair.gp.store.unit_of_work() as uow:
        codes = {a.kind for a in uow.alerts.list(open_only=True)}
    assert "ack-missing" not in codes


def test_a_send_goes_by_the_binding_submit_chose_of_several_with_its_service_and_action(
    pair: Pair, reference_dir: Path
) -> None:
    """Two bindings of one Service and Action, on two channels: submit chooses the one with the
    convention's roles, and every send of the message goes by that one's channel, not by the
    agreement's first binding of that Service and Action."""
    _with_nav_cpa(pair, reference_dir)
    with pair.gp.store.unit_of_work() as uow:
        agreement = agreement_from_row(uow.agreements.for_pair("8100001", "8200002"))
        [pom] = [b for b in agreement.bindings if b.message_type == "OppgjorsMelding"]
        assert pom.channel is not None
        elsewhere = replace(
            pom, channel=replace(pom.channel, endpoint="http://elsewhere.invalid/ebxml")
        )
        conventional = replace(pom, from_role="POMsender", to_role="POMreceiver")
        bindings = [b for b in agreement.bindings if b is not pom]
        save_agreement(uow, replace(agreement, bindings=(elsewhere, conventional, *bindings)))
        uow.commit()
    message_id = submit(pair.gp, _real_pom(pair, reference_dir), actor="t")
    header = _sent_envelope(pair, message_id).header
    assert (header.from_party.role, header.to_party.role) == ("POMsender", "POMreceiver")
    pair.run()
    row = pair.message(pair.gp, message_id)
    assert row.sent_endpoint == pair.hospital_site.endpoint
    assert row.status == "transport-acknowledged" and row.attempts == 1


@dataclass
class _DownAt:
    """A transport that cannot reach one endpoint and takes every delivery to another."""

    down: str
    sent: list[Delivery] = field(default_factory=list)

    def send(self, delivery: Delivery) -> TransportResult:
        if delivery.endpoint == self.down:
            raise TransportFailure("connect-failed", f"cannot reach {delivery.endpoint}")
        self.sent.append(delivery)
        return TransportResult(status_code=200)

    def close(self) -> None:
        pass


def test_a_send_that_works_resolves_the_unreachable_alert_of_an_endpoint_no_longer_used(
    pair: Pair,
) -> None:
    """The partner's endpoint is down, then its agreement names a new one (a typo mended, a
    gateway moved): every send goes to the new one, so the first that works there resolves the
    old endpoint's alert, which was left open for ever."""
    old, new = pair.hospital_site.endpoint, "https://new-gateway.example.no/ebxml"
    transport = _DownAt(old)
    pair.gp.transports = {**pair.gp.transports, "http": transport}
    note = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "Notat"), actor="t")
    Worker(pair.gp, "gp").run_until_idle()
    assert pair.message(pair.gp, note).status == "retrying"
    [alert] = _open_alerts(pair)
    assert alert.kind == "partner-unreachable" and old in alert.summary
    with pair.gp.store.unit_of_work() as uow:
        agreement = agreement_from_row(uow.agreements.for_pair("8100001", "8200002"))
        save_agreement(uow, replace(agreement, endpoint=new))
        uow.commit()
    later = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "Notat 2"), actor="t")
    Worker(pair.gp, "gp").run_until_idle()
    assert [d.endpoint for d in transport.sent] == [new]
    assert pair.message(pair.gp, later).status == "sent"
    assert "partner-unreachable" not in {a.kind for a in _open_alerts(pair)}
