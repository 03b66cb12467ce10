"""CPP/CPA samples parse to concrete parties, channels, reliability, versions and certificates."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from meldingstjener.registry import (
    CollaborationProtocol,
    CpaFormatError,
    PartyNotInAgreement,
    TermsSource,
    agreement_for,
    parse_cpa,
    parse_cpp,
    terms_from_cpp,
)


def _load(reference_dir: Path, name: str) -> bytes:
    return (reference_dir / "samples" / "cpa" / name).read_bytes()


@pytest.fixture
def nav_31162(reference_dir: Path) -> CollaborationProtocol:
    return parse_cpa(_load(reference_dir, "nav-qass-31162.xml"))


def test_nav_cpa_header_and_parties(nav_31162: CollaborationProtocol) -> None:
    assert nav_31162.protocol_id == "nav:qass:31162"
    assert nav_31162.status == "proposed"
    assert nav_31162.start == datetime(2025, 9, 3, 12, 9, 25, 178000, tzinfo=UTC)
    assert nav_31162.end == datetime(2026, 8, 28, 21, 59, tzinfo=UTC)
    pharmacy, nav = nav_31162.parties
    assert (pharmacy.her_id, pharmacy.name, pharmacy.organisation_number) == (
        "8090595",
        "TEST A1 Haugerud",
        "984886136",
    )
    assert nav.her_id == "79768"
    assert nav.roles == ("KontrollUtbetaler", "Frikortregister")
    assert ("orgnummer", "889640782") in nav.party_ids


def test_nav_cpa_channels_and_reliability(nav_31162: CollaborationProtocol) -> None:
    nav = nav_31162.party("79768")
    assert nav is not None
    smtp = nav.channels["NAV_asyncSMTPChannelA2"]
    assert smtp.transport is not None
    assert smtp.transport.kind == "smtp"
    assert smtp.transport.endpoint == "mailto://mottak-qass@test-es.nav.no"
    assert smtp.transport.address == "mottak-qass@test-es.nav.no"
    assert (smtp.ack_requested, smtp.duplicate_elimination, smtp.sync_reply_mode) == (
        "always",
        "always",
        "none",
    )
    assert smtp.doc_exchange is not None
    reliability = smtp.doc_exchange.sender_reliability
    assert reliability is not None
    assert reliability.retries == 4
    assert reliability.retry_interval == timedelta(minutes=240)
    assert smtp.doc_exchange.sender_persist_duration == timedelta(days=2)
    http = nav.channels["NAV_SyncHttpChannelB1"]
    assert http.transport is not None
    assert http.transport.address == "https://nhn-gw-q.nav.no:9443/ebxml/msh"
    assert http.sync_reply_mode == "signalsAndResponse"
    assert http.ack_requested == "never"


def test_nav_cpa_certificates(nav_31162: CollaborationProtocol) -> None:
    pharmacy, nav = nav_31162.parties
    assert nav.signing_certificate is not None
    assert nav.signing_certificate.cert_id == "NAV_default_sign_cert"
    assert "CN=ARBEIDS- OG VELFERDSETATEN TEST" in (nav.signing_certificate.subject or "")
    assert nav.encryption_certificate is not None
    assert nav.encryption_certificate.cert_id == "NAV_default_crypt_cert"
    assert "key_encipherment" in nav.encryption_certificate.key_usage
    assert pharmacy.signing_certificate is not None
    assert "CN=TEST A1 Haugerud" in (pharmacy.signing_certificate.subject or "")
    assert pharmacy.signing_certificate.not_after == datetime(2026, 8, 28, 21, 59, tzinfo=UTC)


def test_message_versions_come_from_the_package_schemas(nav_31162: CollaborationProtocol) -> None:
    pharmacy = nav_31162.party("8090595")
    assert pharmacy is not None
    by_action = {b.action: b for b in pharmacy.can_send}
    claim = by_action["Oppgjorskrav"]
    assert claim.service == "OppgjorsKontroll"
    assert claim.message_version == "2.5"
    assert claim.business_schema is not None
    assert claim.business_schema.namespace == "http://www.kith.no/xmlstds/eresept/m18/2013-04-16"
    assert by_action["Svarmelding"].message_version == "1.0"
    assert claim.other_party_binding == "NAV_Oppgjorskrav6"


def test_agreement_for_the_pharmacy(nav_31162: CollaborationProtocol) -> None:
    terms = agreement_for(nav_31162, "8090595")
    assert terms.source is TermsSource.CPA
    assert (terms.counterparty_her_id, terms.cpa_id) == ("79768", "nav:qass:31162")
    assert terms.message_types() == {
        "Oppgjorskrav": ("2.5",),
        "Svarmelding": ("1.0",),
        "EgenandelForesporsel": ("1.0",),
    }
    channel = terms.default_channel
    assert channel is not None
    assert (channel.transport, channel.endpoint) == ("smtp", "mottak-qass@test-es.nav.no")
    assert (channel.retries, channel.retry_interval, channel.persist_duration) == (
        4,
        timedelta(hours=4),
        timedelta(days=2),
    )
    (request,) = terms.outbound_for("EgenandelForesporsel")
    assert request.channel is not None
    assert request.channel.transport == "http"
    assert request.channel.endpoint == "https://nhn-gw-q.nav.no:9443/ebxml/msh"
    assert {m.message_type for m in terms.inbound} == {
        "Oppgjorsresultat",
        "Utbetaling",
        "Svarmelding",
        "Svar",
        "Avvisning",
    }
    assert terms.encryption_certificate is not None
    assert terms.encryption_certificate.cert_id == "NAV_default_crypt_cert"


def test_agreement_seen_from_nav(nav_31162: CollaborationProtocol) -> None:
    terms = agreement_for(nav_31162, "79768")
    assert terms.counterparty_her_id == "8090595"
    assert terms.default_channel is not None
    assert terms.default_channel.endpoint == "TEST_A1_Haugerud_t1@edi.nhn.no"
    assert set(terms.message_types()) == {
        "Oppgjorsresultat",
        "Utbetaling",
        "Svarmelding",
        "Svar",
        "Avvisning",
    }


def test_second_nav_cpa(reference_dir: Path) -> None:
    cpa = parse_cpa(_load(reference_dir, "nav-qass-35065.xml"))
    terms = agreement_for(cpa, "8141253")
    assert terms.counterparty_her_id == "79768"
    assert terms.default_channel is not None
    assert terms.default_channel.retry_interval == timedelta(minutes=720)
    assert terms.default_channel.persist_duration == timedelta(days=4)
    assert terms.default_channel.endpoint == "example2@example.com"
    assert terms.message_types()["Sykmelding"] == ("1.1",)
    speare = cpa.party("8141253")
    assert speare is not None
    assert speare.channels["Partner_channelSMTP0_partner"].duplicate_elimination == "perMessage"


def test_helsenorge_amqp_cpa(reference_dir: Path) -> None:
    cpa = parse_cpa(_load(reference_dir, "helsenorge-CPA_93252.xml"))
    assert cpa.protocol_id == "49391409-e528-4919-b4a3-9ccdab72c8c1"
    assert [p.her_id for p in cpa.parties] == ["93238", "93252"]
    terms = agreement_for(cpa, "93252")
    assert terms.counterparty_her_id == "93238"
    assert terms.counterparty_name == "Digitale innbyggertjenester"
    channel = terms.default_channel
    assert channel is not None
    assert (channel.transport, channel.endpoint) == (
        "amqp",
        "sb.test.nhn.no/DigitalDialog/93238_async",
    )
    assert channel.retries == 0
    # An empty MessagingCharacteristics means the schema defaults.
    assert (channel.ack_requested, channel.sync_reply_mode) == ("perMessage", "none")
    types = terms.message_types()
    assert types["DIALOG_INNBYGGER_EKONTAKT"] == ("1.1",)
    assert types["APPREC"] == ("1.1",)
    assert terms.encryption_certificate is not None
    assert "CN=TEST helsenorge.no tjenester" in (terms.encryption_certificate.subject or "")


def test_a_dedicated_signing_certificate_wins_over_a_dual_use_one_named_for_signing(
    reference_dir: Path,
) -> None:
    # the Helsenorge CPA names "enc" (digitalSignature and encryption) for signing, beside "sign"
    cpa = parse_cpa(_load(reference_dir, "helsenorge-CPA_93252.xml"))
    for her_id in ("93238", "93252"):
        party = cpa.party(her_id)
        assert party is not None and party.signing_certificate_id == "enc"
        assert party.signing_certificate is not None
        assert party.signing_certificate.cert_id == "sign"
        assert party.encryption_certificate is not None
        assert party.encryption_certificate.cert_id == "enc"


def test_helsenorge_cpp(reference_dir: Path) -> None:
    cpp = parse_cpp(_load(reference_dir, "helsenorge-CPP_93238.xml"))
    assert cpp.kind == "cpp"
    assert [p.her_id for p in cpp.parties] == ["93238"]
    terms = terms_from_cpp(cpp, "93252")
    assert terms.source is TermsSource.CPP
    assert terms.cpa_id is None
    assert terms.counterparty_her_id == "93238"
    assert terms.default_channel is not None
    assert terms.default_channel.endpoint == "sb.test.nhn.no/DigitalDialog/93238_async"
    assert terms.message_types()["DIALOG_INNBYGGER_EKONTAKT"] == ("1.1",)


def test_wrong_kind_and_wrong_party(reference_dir: Path, nav_31162: CollaborationProtocol) -> None:
    with pytest.raises(CpaFormatError, match="expected a CPA"):
        parse_cpa(_load(reference_dir, "helsenorge-CPP_93238.xml"))
    with pytest.raises(CpaFormatError, match="expected a CPP"):
        parse_cpp(_load(reference_dir, "nav-qass-31162.xml"))
    with pytest.raises(PartyNotInAgreement, match="does not name HER-id 12345"):
        agreement_for(nav_31162, "12345")


def test_not_a_cppa_document() -> None:
    with pytest.raises(CpaFormatError, match=r"not a CPPA 2\.0 document"):
        parse_cpa(b"<Envelope/>")
    with pytest.raises(CpaFormatError, match="not usable XML"):
        parse_cpa(b"<unclosed>")


def test_bad_retry_interval_names_the_field() -> None:
    ns = "http://www.oasis-open.org/committees/ebxml-cppa/schema/cpp-cpa-2_0.xsd"
    document = f"""<c:CollaborationProtocolProfile xmlns:c="{ns}" c:cppid="x">
      <c:PartyInfo c:partyName="A"><c:PartyId c:type="HER">1</c:PartyId>
        <c:DocExchange c:docExchangeId="d"><c:ebXMLSenderBinding><c:ReliableMessaging>
          <c:Retries>3</c:Retries><c:RetryInterval>twelve hours</c:RetryInterval>
        </c:ReliableMessaging></c:ebXMLSenderBinding></c:DocExchange>
      </c:PartyInfo></c:CollaborationProtocolProfile>"""
    with pytest.raises(CpaFormatError, match="DocExchange d sender RetryInterval"):
        parse_cpp(document.encode())


@pytest.mark.parametrize("retries", ["\u00b2", "\u0663"], ids=["superscript", "arabic-indic"])
def test_retries_in_other_digits_than_ascii_are_a_format_error(retries: str) -> None:
    # str.isdigit() takes them, int() refuses "²": a plain ValueError no caller expects
    ns = "http://www.oasis-open.org/committees/ebxml-cppa/schema/cpp-cpa-2_0.xsd"
    document = f"""<c:CollaborationProtocolProfile xmlns:c="{ns}" c:cppid="x">
      <c:PartyInfo c:partyName="A"><c:PartyId c:type="HER">1</c:PartyId>
        <c:DocExchange c:docExchangeId="d"><c:ebXMLSenderBinding><c:ReliableMessaging>
          <c:Retries>{retries}</c:Retries><c:RetryInterval>PT2H</c:RetryInterval>
        </c:ReliableMessaging></c:ebXMLSenderBinding></c:DocExchange>
      </c:PartyInfo></c:CollaborationProtocolProfile>"""
    with pytest.raises(CpaFormatError, match="Retries must be a whole number"):
        parse_cpp(document.encode())


def test_bindings_pair_the_sender_role_with_the_receiver_role(reference_dir: Path) -> None:
    """With no OtherPartyActionBinding (Helsenorge), our CanSend in the sender role pairs with
    their CanReceive in the receiver role, and the other way round; NAV's CPA names both."""
    helsenorge = agreement_for(parse_cpa(_load(reference_dir, "helsenorge-CPA_93252.xml")), "93252")
    kind = "DIALOG_INNBYGGER_EKONTAKT"
    roles = {(m.from_role, m.to_role) for m in helsenorge.outbound if m.message_type == kind}
    assert roles == {(f"{kind}sender", f"{kind}receiver"), (f"{kind}receiver", f"{kind}sender")}
    nav = agreement_for(parse_cpa(_load(reference_dir, "nav-qass-35065.xml")), "79768")
    answer = [m for m in nav.outbound if m.service == "BehandlerKrav"]
    assert [(m.message_type, m.from_role, m.to_role) for m in answer] == [
        ("Svarmelding", "KontrollUtbetaler", "Behandler")
    ]
    assert answer[0].namespaces == ("http://www.kith.no/xmlstds/apprec/2004-11-21",)
