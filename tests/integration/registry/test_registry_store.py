"""The local register on SQLite and PostgreSQL: every sample imports to the right values,
upserts never wipe, agreements round-trip, and the outbound gate refuses what is not agreed."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from meldingstjener.registry import (
    AgreementState,
    Contact,
    NotAgreed,
    PartnerAgreement,
    PartyType,
    TermsSource,
    parse_certificate_json,
    parse_party_json,
    with_certificates,
)
from meldingstjener.registry.lookup import AddressingError, resolve_receiver
from meldingstjener.registry.policy import check_outbound
from meldingstjener.registry.store import (
    agreement_from_row,
    import_files,
    load_index,
    party_from_row,
    save_agreement,
    save_parties,
)
from meldingstjener.store.uow import Store

OURS = "8142987"


def _import_all(store: Store, ar_samples: Path) -> dict[str, int]:
    with store.unit_of_work() as uow:
        report = import_files(uow, sorted(ar_samples.iterdir()))
        uow.commit()
    return {Path(k).name: v for k, v in report.imported.items()}


def test_every_sample_imports_with_the_right_values(store: Store, ar_samples: Path) -> None:
    imported = _import_all(store, ar_samples)
    # Certificate documents and the "not found" fault are not parties and are refused.
    assert imported["nav-NavCommunicationParty.json"] == 1
    assert imported["ks-soap-get-communication-party-details-organzation-response.xml"] == 3
    assert "nav-NavSignCert.json" not in imported
    with store.unit_of_work() as uow:
        nav = party_from_row(uow.parties.get("79768"))  # type: ignore[arg-type]
        service = party_from_row(uow.parties.get("8141705"))  # type: ignore[arg-type]
        person = party_from_row(uow.parties.get("8141791"))  # type: ignore[arg-type]
        soap_service = party_from_row(uow.parties.get("8094866"))  # type: ignore[arg-type]
        organisation = party_from_row(uow.parties.get("8142987"))  # type: ignore[arg-type]
    assert (nav.name, nav.display_name, nav.organisation_number) == ("NAV IKT", "NAV", "990983291")
    assert nav.edi_address == "mottak-qass@test-es.nav.no"
    assert nav.signing_certificate is not None
    assert nav.signing_certificate.thumbprint == "42B5D65754297E5417182530CD2FE473D45CF7D5"
    assert nav.amqp_queues == {}
    assert service.party_type is PartyType.SERVICE and service.parent_her_id == "8141703"
    assert service.parent_organisation_number == "999988891"
    assert [c.code for c in service.service_types] == ["05"]
    assert service.queue("dl") == "tb.test.nhn.no/NHNTESTServiceBus/8141703_dl"
    assert service.municipality == "Oslo"
    assert person.name == "Jonny Karl Rønhovde" and person.party_type is PartyType.PERSON
    assert soap_service.edi_address == "meldingsvalidator@samsvar.nhn.no"
    assert [(c.code, c.code_list) for c in soap_service.service_types] == [("6", "8658")]
    assert organisation.valid is False  # IsValidCommunicationParty false in the sample


def test_certificate_bytes_survive_a_metadata_only_update(store: Store, ar_samples: Path) -> None:
    record = parse_party_json((ar_samples / "nav-NavCommunicationParty.json").read_bytes())
    full = with_certificates(
        record,
        signing=parse_certificate_json((ar_samples / "nav-NavSignCert.json").read_bytes()),
        encryption=parse_certificate_json((ar_samples / "nav-NavEncryptCert.json").read_bytes()),
    )
    with store.unit_of_work() as uow:
        save_parties(uow, [full])
        uow.commit()
    # The register's party record names the thumbprint only; our bytes must stay.
    with store.unit_of_work() as uow:
        save_parties(uow, [replace(record, name="NAV IKT (renamed)")])
        uow.commit()
    with store.unit_of_work() as uow:
        row = uow.parties.get("79768")
        assert row is not None
        stored = party_from_row(row)
    assert stored.name == "NAV IKT (renamed)"
    assert stored.signing_certificate_der == full.signing_certificate_der
    assert stored.encryption_certificate_der == full.encryption_certificate_der
    assert stored.signing_certificate is not None
    assert stored.signing_certificate.subject is not None
    assert "ARBEIDS- OG VELFERDSETATEN TEST" in stored.signing_certificate.subject


def test_search_over_stored_parties_forgives_typos_and_missing_letters(
    store: Store, ar_samples: Path
) -> None:
    _import_all(store, ar_samples)
    with store.unit_of_work() as uow:
        index = load_index(uow)
    # "Rønhovde" typed without ø and with a letter swapped.
    assert index.search("jonny ronhvode")[0].party.her_id == "8141791"
    assert index.search("990983291")[0].party.her_id == "79768"
    assert index.search("8094866")[0].party.her_id == "8094866"
    services = index.search("meldingsvalidering", party_type="service")
    assert [h.party.her_id for h in services] == ["8094866"]
    assert index.search("meldingsvalidering", party_type="person") == []


def test_service_resolves_to_its_organisation(store: Store, ar_samples: Path) -> None:
    _import_all(store, ar_samples)
    with store.unit_of_work() as uow:
        resolved = resolve_receiver(uow, "8143060")
        assert resolved.organisation.her_id == "8142987"
        assert resolved.service is not None and resolved.service.her_id == "8143060"
        person = resolve_receiver(uow, "115522")
        assert person.organisation.her_id == "84556" and person.person is not None
        with pytest.raises(AddressingError) as required:
            resolve_receiver(uow, "8142987", service_addressing_required=True)
        assert required.value.code == "service-addressing-required"
        assert "8143060" in str(required.value)
        assert resolve_receiver(uow, "8142987").service is None  # not mandatory here
        with pytest.raises(AddressingError) as orphan:
            resolve_receiver(uow, "8141705")  # its organisation 8141703 was never imported
        assert orphan.value.code == "service-without-organisation"
        with pytest.raises(AddressingError) as inactive:
            resolve_receiver(uow, "8143040")
        assert inactive.value.code == "party-inactive"


def _agreement(**changes: object) -> PartnerAgreement:
    base = PartnerAgreement(
        our_her_id=OURS,
        counterparty_her_id="79768",
        state=AgreementState.ACTIVE,
        source=TermsSource.CPA,
        cpa_id="nav:qass:35065",
        channel="smtp",
        endpoint="mottak-qass@test-es.nav.no",
        message_types={"DIALOG_FORESPORSEL": ("1.1", "1.0"), "APPREC": ("1.0",)},
        retries=3,
        retry_interval=timedelta(hours=2),
        persist_duration=timedelta(days=4),
        ack_requested="always",
        duplicate_elimination="always",
        sync_reply_mode="none",
        contacts=(Contact("Drift", role="support", email="drift@example.no"),),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_agreement_round_trips_through_the_store(store: Store) -> None:
    agreement = _agreement()
    with store.unit_of_work() as uow:
        save_agreement(uow, agreement)
        uow.commit()
    with store.unit_of_work() as uow:
        row = uow.agreements.for_pair(OURS, "79768")
        assert row is not None
        assert row.message_types == [
            {"type": "APPREC", "versions": ["1.0"]},
            {"type": "DIALOG_FORESPORSEL", "versions": ["1.1", "1.0"]},
        ]
        back = agreement_from_row(row)
    assert back.message_types == agreement.message_types
    assert (back.state, back.source, back.cpa_id) == (
        AgreementState.ACTIVE,
        TermsSource.CPA,
        "nav:qass:35065",
    )
    assert (back.retries, back.retry_interval) == (3, timedelta(hours=2))
    assert back.contacts == agreement.contacts
    # Saving again updates the same row instead of adding one.
    with store.unit_of_work() as uow:
        save_agreement(uow, replace(agreement, state=AgreementState.SUSPENDED))
        uow.commit()
    with store.unit_of_work() as uow:
        rows = uow.agreements.for_counterparty("79768")
    assert [r.state for r in rows] == ["suspended"]


def test_an_agreement_from_a_cpa_keeps_its_end_and_nothing_is_sent_after_it(
    store: Store, cpa_samples: Path
) -> None:
    from meldingstjener.registry.cpa import agreement_for, parse_cpa

    cpa = parse_cpa((cpa_samples / "nav-qass-31162.xml").read_bytes())
    assert cpa.end is not None
    ours = cpa.parties[0].her_id
    agreement = PartnerAgreement.from_terms(
        agreement_for(cpa, ours), our_her_id=ours, state=AgreementState.ACTIVE
    )
    with store.unit_of_work() as uow:
        save_agreement(uow, agreement)
        uow.commit()
    with store.unit_of_work() as uow:
        row = uow.agreements.for_pair(ours, "79768")
        assert row is not None
        assert agreement_from_row(row).valid_to == cpa.end
        message_type, versions = next(iter(agreement.message_types.items()))
        send = (uow, ours, "79768", message_type, versions[0])
        check_outbound(*send, now=cpa.end - timedelta(days=1))  # in force: allowed
        check_outbound(uow, ours, "79768", None, None, now=cpa.end)
        for gate in (
            lambda: check_outbound(*send, now=cpa.end + timedelta(minutes=1)),
            lambda: check_outbound(uow, ours, "79768", None, None, now=cpa.end + timedelta(days=1)),
        ):
            with pytest.raises(NotAgreed) as ended:
                gate()
            assert ended.value.code == "agreement-not-active"
            assert f"ended {cpa.end.isoformat()}" in str(ended.value)


def test_the_gate_checks_an_end_by_the_clock_when_given_no_moment(store: Store) -> None:
    with store.unit_of_work() as uow:
        save_agreement(uow, _agreement(valid_to=datetime.now(UTC) - timedelta(minutes=1)))
        save_agreement(
            uow,
            _agreement(
                counterparty_her_id="8141253", valid_to=datetime.now(UTC) + timedelta(days=1)
            ),
        )
        uow.commit()
    with store.unit_of_work() as uow:
        check_outbound(uow, OURS, "8141253", "APPREC", "1.0")
        with pytest.raises(NotAgreed) as ended:
            check_outbound(uow, OURS, "79768", "APPREC", "1.0")
    assert ended.value.code == "agreement-not-active" and "renew the CPA" in str(ended.value)


def test_terms_from_the_register_keep_no_end_of_their_own(store: Store) -> None:
    # the party's validity (kept current by each sync) is what counts for them, not a copy
    with store.unit_of_work() as uow:
        save_agreement(
            uow,
            _agreement(source=TermsSource.AR, valid_to=datetime(2020, 1, 1, tzinfo=UTC)),
        )
        uow.commit()
    with store.unit_of_work() as uow:
        row = uow.agreements.for_pair(OURS, "79768")
        assert row is not None and row.valid_to is None
        check_outbound(uow, OURS, "79768", "APPREC", "1.0")


@pytest.mark.parametrize(
    ("agreement", "msg_type", "version", "code"),
    [
        (_agreement(), "DIALOG_FORESPORSEL", "2.0", "version-not-agreed"),
        (_agreement(), "DIALOG_NOTAT", "1.0", "message-type-not-agreed"),
        (_agreement(), "DIALOG_NOTAT", None, "message-type-not-agreed"),
        (_agreement(state=AgreementState.TESTING), "APPREC", "1.0", "agreement-not-active"),
        (_agreement(state=AgreementState.SUSPENDED), None, None, "agreement-not-active"),
    ],
)
def test_outbound_gate_refuses_what_is_not_agreed(
    store: Store,
    agreement: PartnerAgreement,
    msg_type: str | None,
    version: str | None,
    code: str,
) -> None:
    with store.unit_of_work() as uow:
        save_agreement(uow, agreement)
        uow.commit()
    with store.unit_of_work() as uow, pytest.raises(NotAgreed) as refused:
        check_outbound(uow, OURS, "79768", msg_type, version)
    assert refused.value.code == code
    assert "79768" in str(refused.value)


def test_outbound_gate_allows_agreed_and_unrestricted_sends(store: Store) -> None:
    with store.unit_of_work() as uow:
        save_agreement(uow, _agreement())
        save_agreement(
            uow, _agreement(counterparty_her_id="8141253", message_types={}, any_message_type=True)
        )
        save_agreement(uow, _agreement(counterparty_her_id="115522", state=AgreementState.TESTING))
        uow.commit()
    with store.unit_of_work() as uow:
        check_outbound(uow, OURS, "79768", "DIALOG_FORESPORSEL", "1.0")
        check_outbound(uow, OURS, "79768", "dialog_foresporsel", "v1p1")
        check_outbound(uow, OURS, "79768", "APPREC", None)
        check_outbound(uow, OURS, "8141253", "ANYTHING", "9.9")  # empty list: anything goes
        check_outbound(uow, OURS, "115522", "APPREC", "1.0", test_message=True)
        with pytest.raises(NotAgreed) as missing:
            check_outbound(uow, OURS, "999999", "APPREC", "1.0")
    assert missing.value.code == "no-agreement"


def test_no_common_version_refuses_the_send(store: Store) -> None:
    from meldingstjener.registry import negotiate_version

    with store.unit_of_work() as uow:
        save_agreement(uow, _agreement(message_types={"DIALOG_FORESPORSEL": ("1.0",)}))
        uow.commit()
    with store.unit_of_work() as uow:
        row = uow.agreements.for_pair(OURS, "79768")
        assert row is not None
        agreement = agreement_from_row(row)
        with pytest.raises(NotAgreed) as none_common:
            negotiate_version(agreement, "DIALOG_FORESPORSEL", ["1.1", "2.0"])
        assert none_common.value.code == "no-common-version"
        with pytest.raises(NotAgreed) as refused:
            check_outbound(uow, OURS, "79768", "DIALOG_FORESPORSEL", "1.1")
    assert refused.value.code == "version-not-agreed"


def test_an_agreement_from_a_cpa_keeps_its_bindings_through_the_store(
    store: Store, cpa_samples: Path
) -> None:
    """Per action, the CPA's Service, Action, both Roles, package namespaces and the receiver's
    channel (with ackRequested and syncReplyMode as the CPA words them) survive the store."""
    from meldingstjener.registry.cpa import agreement_for, parse_cpa

    nav = parse_cpa((cpa_samples / "nav-qass-35065.xml").read_bytes())
    helsenorge = parse_cpa((cpa_samples / "helsenorge-CPA_93252.xml").read_bytes())
    saved = [
        PartnerAgreement.from_terms(agreement_for(nav, "8141253"), state=AgreementState.ACTIVE),
        PartnerAgreement.from_terms(agreement_for(helsenorge, "93252")),
    ]
    with store.unit_of_work() as uow:
        for agreement in saved:
            save_agreement(uow, agreement)
        uow.commit()
    with store.unit_of_work() as uow:
        pairs = (("8141253", "79768"), ("93252", "93238"))
        rows = [uow.agreements.for_pair(ours, theirs) for ours, theirs in pairs]
        back = [agreement_from_row(row) for row in rows if row is not None]
    assert [a.bindings for a in back] == [a.bindings for a in saved]
    claim = next(b for b in back[0].bindings if b.message_type == "OppgjorsMelding")
    assert (claim.service, claim.service_type, claim.from_role, claim.to_role) == (
        "BehandlerKrav",
        "string",
        "Behandler",
        "KontrollUtbetaler",
    )
    assert claim.namespaces == (
        "http://www.kith.no/xmlstds/msghead/2006-05-24",
        "http://www.kith.no/xmlstds/bkm/2006-12-20",
    )
    assert claim.channel is not None
    assert (claim.channel.transport, claim.channel.endpoint) == ("smtp", "example2@example.com")
    assert (claim.channel.ack_requested, claim.channel.sync_reply_mode) == ("always", "none")
    question = next(b for b in back[0].bindings if b.service == "HarBorgerFrikort")
    assert question.channel is not None
    assert (question.channel.transport, question.channel.endpoint) == (
        "http",
        "https://nhn-gw-q.nav.no:9443/ebxml/msh",
    )
    assert (question.channel.ack_requested, question.channel.sync_reply_mode) == (
        "never",
        "signalsAndResponse",
    )
    # Helsenorge's AMQP channels say perMessage, which the boolean column alone would lose
    assert (back[1].ack_requested, back[1].duplicate_elimination) == ("perMessage", "perMessage")
    # a reader of message types sees the types only
    assert "BehandlerKrav" not in back[0].message_types
    assert "OppgjorsMelding" in back[0].message_types
