"""Partner agreements: version choice, the send gate, states, and the CPA -> CPP -> AR fallback."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

import pytest

from meldingstjener.registry import (
    AgreementState,
    CollaborationProtocol,
    CommunicationParty,
    NotAgreed,
    PartnerAgreement,
    PartyType,
    TermsSource,
    check_send,
    check_state_change,
    choose_version,
    negotiate_version,
    parse_cpa,
    parse_cpp,
    parse_party_json,
    resolve_terms,
)


def _agreement(**changes: object) -> PartnerAgreement:
    values: dict[str, object] = {
        "our_her_id": "8090595",
        "counterparty_her_id": "79768",
        "state": AgreementState.ACTIVE,
        "source": TermsSource.MANUAL,
        "message_types": {"EPIKRISE": ("1.2",), "DIALOG_FORESPORSEL": ("1.0", "1.1")},
    }
    values.update(changes)
    return PartnerAgreement(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "ours, theirs, expected",
    [
        (["1.0", "1.1", "1.2"], ["1.1", "1.2", "1.3"], "1.2"),
        (["1.0"], ["1.0"], "1.0"),
        (["1.9", "1.10"], ["1.10", "1.9"], "1.10"),  # numeric, not text, order
        (["v1p1"], ["1.1"], "1.1"),
        (["1.0"], ["1.1"], None),
        ([], ["1.1"], None),
    ],
)
def test_choose_version_takes_the_newest_common(
    ours: list[str], theirs: list[str], expected: str | None
) -> None:
    assert choose_version(ours, theirs) == expected


def test_agreed_type_and_version_pass() -> None:
    check_send(_agreement(), "EPIKRISE", "1.2")
    check_send(_agreement(), "dialog_foresporsel", "1.1")  # type names are not case-sensitive


def test_unknown_message_type_is_refused() -> None:
    with pytest.raises(NotAgreed) as caught:
        check_send(_agreement(), "HENVISNING", "1.1")
    assert caught.value.code == "message-type-not-agreed"
    assert "HENVISNING" in str(caught.value) and "79768" in str(caught.value)


def test_version_not_agreed_is_refused() -> None:
    with pytest.raises(NotAgreed, match=r"EPIKRISE version 1\.1 is not agreed") as caught:
        check_send(_agreement(), "EPIKRISE", "1.1")
    assert caught.value.code == "version-not-agreed"


def test_no_common_version_refuses_the_send() -> None:
    agreement = _agreement()
    assert negotiate_version(agreement, "DIALOG_FORESPORSEL", ["1.1", "1.0"]) == "1.1"
    with pytest.raises(NotAgreed) as caught:
        negotiate_version(agreement, "EPIKRISE", ["1.0", "1.1"])
    assert caught.value.code == "no-common-version"
    assert "we support 1.1, 1.0, they accept 1.2" in caught.value.message


@pytest.mark.parametrize(
    "state", [AgreementState.ORDERED, AgreementState.VERIFIED_INACTIVE, AgreementState.SUSPENDED]
)
def test_inactive_agreement_refuses_everything(state: AgreementState) -> None:
    with pytest.raises(NotAgreed) as caught:
        check_send(_agreement(state=state), "EPIKRISE", "1.2")
    assert caught.value.code == "agreement-not-active"


@pytest.mark.parametrize("state", [AgreementState.TESTING, AgreementState.VERIFIED_INACTIVE])
def test_testing_and_verified_inactive_allow_only_test_messages(state: AgreementState) -> None:
    # verified-inactive: step 5 of the routine, a test message on the activation date
    onboarding = _agreement(state=state)
    check_send(onboarding, "EPIKRISE", "1.2", test_message=True)
    with pytest.raises(NotAgreed, match="only test messages"):
        check_send(onboarding, "EPIKRISE", "1.2")


def test_expired_agreement_is_refused() -> None:
    ended = _agreement(valid_to=datetime(2024, 1, 1, tzinfo=UTC))
    with pytest.raises(NotAgreed, match="ended"):
        check_send(ended, "EPIKRISE", "1.2", now=datetime(2025, 1, 1, tzinfo=UTC))


def test_state_changes_follow_the_onboarding_routine() -> None:
    assert (
        check_state_change(AgreementState.ORDERED, AgreementState.TESTING) is AgreementState.TESTING
    )
    assert (
        check_state_change(AgreementState.ACTIVE, AgreementState.SUSPENDED)
        is AgreementState.SUSPENDED
    )
    with pytest.raises(NotAgreed, match="cannot go from ordered to active") as caught:
        check_state_change(AgreementState.ORDERED, AgreementState.ACTIVE)
    assert caught.value.code == "illegal-state-change"


class Documents(NamedTuple):
    cpa: CollaborationProtocol
    cpp: CollaborationProtocol
    nav_cpa: CollaborationProtocol
    nav_party: CommunicationParty


@pytest.fixture
def documents(reference_dir: Path) -> Documents:
    cpa_dir = reference_dir / "samples" / "cpa"
    ar_dir = reference_dir / "samples" / "ar"
    return Documents(
        cpa=parse_cpa((cpa_dir / "helsenorge-CPA_93252.xml").read_bytes()),
        cpp=parse_cpp((cpa_dir / "helsenorge-CPP_93238.xml").read_bytes()),
        nav_cpa=parse_cpa((cpa_dir / "nav-qass-31162.xml").read_bytes()),
        nav_party=parse_party_json((ar_dir / "nav-NavCommunicationParty.json").read_bytes()),
    )


def test_fallback_uses_the_cpa_first(documents: Documents) -> None:
    terms, source = resolve_terms(
        documents.cpa,
        documents.cpp,
        None,
        our_her_id="93252",
    )
    assert source is TermsSource.CPA
    assert terms.cpa_id == "49391409-e528-4919-b4a3-9ccdab72c8c1"
    assert terms.notes == ()


def test_fallback_to_the_cpp_without_a_cpa(documents: Documents) -> None:
    terms, source = resolve_terms(None, documents.cpp, None, our_her_id="93252")
    assert source is TermsSource.CPP
    assert terms.source is TermsSource.CPP
    assert terms.notes == ("no CPA with the counterparty",)
    assert terms.message_types()["DIALOG_INNBYGGER_EKONTAKT"] == ("1.1",)


def test_expired_cpa_falls_back_and_says_why(documents: Documents) -> None:
    # The Helsenorge sample CPA ended in February 2017.
    terms, source = resolve_terms(
        documents.cpa,
        documents.cpp,
        None,
        our_her_id="93252",
        now=datetime(2020, 1, 1, tzinfo=UTC),
    )
    assert source is TermsSource.CPP
    assert "is not in force" in terms.notes[0]


def test_fallback_to_the_address_register(documents: Documents) -> None:
    terms, source = resolve_terms(None, None, documents.nav_party, our_her_id="8090595")
    assert source is TermsSource.AR
    assert terms.any_message_type
    assert terms.default_channel is not None
    assert (terms.default_channel.transport, terms.default_channel.endpoint) == (
        "smtp",
        "mottak-qass@test-es.nav.no",
    )
    assert terms.default_channel.retry_interval == timedelta(hours=12)
    assert terms.notes == ("no CPA with the counterparty", "no CPP from the counterparty")


def test_cpa_without_our_her_id_falls_back(documents: Documents) -> None:
    terms, source = resolve_terms(
        documents.nav_cpa,
        None,
        documents.nav_party,
        our_her_id="93252",
    )
    assert source is TermsSource.AR
    assert "does not name HER-id 93252" in terms.notes[0]


def test_ar_party_with_queues_gives_amqp() -> None:
    party = CommunicationParty(
        her_id="8141705",
        party_type=PartyType.SERVICE,
        name="Allmennlege",
        amqp_queues={"async": "tb.test.nhn.no/Bus/8141703_async"},
        edi_address="x@edi.nhn.no",
    )
    terms, source = resolve_terms(None, None, party, our_her_id="1")
    assert source is TermsSource.AR
    assert terms.default_channel is not None
    assert (terms.default_channel.transport, terms.default_channel.endpoint) == (
        "amqp",
        "tb.test.nhn.no/Bus/8141703_async",
    )


def test_no_source_at_all_is_refused() -> None:
    with pytest.raises(NotAgreed) as caught:
        resolve_terms(None, None, None, our_her_id="1")
    assert caught.value.code == "no-agreement-source"


def test_agreement_from_cpa_terms_gates_sends(documents: Documents) -> None:
    terms, _ = resolve_terms(documents.nav_cpa, None, None, our_her_id="8090595")
    agreement = PartnerAgreement.from_terms(terms, state=AgreementState.ACTIVE)
    assert agreement.cpa_id == "nav:qass:31162"
    assert (agreement.channel, agreement.endpoint) == ("smtp", "mottak-qass@test-es.nav.no")
    assert (agreement.retries, agreement.retry_interval) == (4, timedelta(hours=4))
    assert agreement.persist_duration == timedelta(days=2)
    assert (agreement.ack_requested, agreement.duplicate_elimination) == ("always", "always")
    assert agreement.sync_reply_mode == "none"
    check_send(agreement, "Oppgjorskrav", "2.5")
    with pytest.raises(NotAgreed) as caught:
        negotiate_version(agreement, "Oppgjorskrav", ["2.4"])
    assert caught.value.code == "no-common-version"


def test_agreement_from_ar_terms_allows_any_type(documents: Documents) -> None:
    terms, _ = resolve_terms(None, None, documents.nav_party, our_her_id="8090595")
    agreement = PartnerAgreement.from_terms(terms, state=AgreementState.ACTIVE)
    assert agreement.source is TermsSource.AR
    check_send(agreement, "DIALOG_NOTAT", "1.0")
    assert negotiate_version(agreement, "DIALOG_NOTAT", ["1.0", "1.1"]) == "1.1"


# --- the binding a business document goes by ------------------------------------------------

APPREC_10_NS = "http://www.kith.no/xmlstds/apprec/2004-11-21"
REAL_POM = "samples/ebxml/real-smtp-mail/2023_08_29T12_56_58_328.p7m.deenveloped.ungz"


def _cpa_agreement(reference_dir: Path, name: str, ours: str) -> PartnerAgreement:
    from meldingstjener.registry import agreement_for

    cpa = parse_cpa((reference_dir / "samples" / "cpa" / name).read_bytes())
    return PartnerAgreement.from_terms(agreement_for(cpa, ours), state=AgreementState.ACTIVE)


def test_a_real_pom_goes_by_navs_binding_for_its_namespace(reference_dir: Path) -> None:
    """NAV's CPA names the POM's binding BehandlerKrav/OppgjorsMelding: the MsgHead type is
    no Action there, the bkm namespace of the business document finds it."""
    from meldingstjener.engine.fagmelding import inspect

    agreement = _cpa_agreement(reference_dir, "nav-qass-35065.xml", "8141253")
    pom = inspect((reference_dir / REAL_POM).read_bytes())
    assert pom.msg_type == "POM"
    assert "http://www.kith.no/xmlstds/bkm/2006-12-20" in pom.namespaces
    binding = check_send(agreement, "POM", "1.0", namespaces=pom.namespaces)
    assert binding is not None
    assert (binding.service, binding.message_type, binding.from_role, binding.to_role) == (
        "BehandlerKrav",
        "OppgjorsMelding",
        "Behandler",
        "KontrollUtbetaler",
    )
    # no namespace that fits and no Action POM: refused, naming the type and the namespace
    with pytest.raises(NotAgreed) as refused:
        check_send(agreement, "POM", None, namespaces=("urn:no-such-schema",))
    assert refused.value.code == "message-type-not-agreed"
    assert "POM" in str(refused.value) and "urn:no-such-schema" in str(refused.value)


def test_an_apprec_goes_by_the_apprec_binding_of_the_service_it_answers(
    reference_dir: Path,
) -> None:
    nav = _cpa_agreement(reference_dir, "nav-qass-35065.xml", "79768")
    binding = check_send(
        nav, "APPREC", None, namespaces=(APPREC_10_NS,), answered_service="BehandlerKrav"
    )
    assert binding is not None
    assert (binding.service, binding.message_type, binding.from_role, binding.to_role) == (
        "BehandlerKrav",
        "Svarmelding",
        "KontrollUtbetaler",
        "Behandler",
    )
    with pytest.raises(NotAgreed) as refused:  # NAV sends no AppRec in a service it sends in
        check_send(nav, "APPREC", None, namespaces=(APPREC_10_NS,), answered_service="Nope")
    assert refused.value.code == "message-type-not-agreed"


def test_helsenorge_bindings_keep_the_convention(reference_dir: Path) -> None:
    """Every Helsenorge service takes Dialogmelding 1.1: the Action that is the MsgHead type
    and the convention's roles choose among them."""
    agreement = _cpa_agreement(reference_dir, "helsenorge-CPA_93252.xml", "93252")
    kind = "DIALOG_INNBYGGER_EKONTAKT"
    binding = check_send(
        agreement,
        kind,
        None,
        namespaces=(
            "http://www.kith.no/xmlstds/msghead/2006-05-24",
            "http://www.kith.no/xmlstds/dialog/2013-01-23",
        ),
        preferred_roles=(f"{kind}sender", f"{kind}receiver"),
    )
    assert binding is not None
    assert (binding.service, binding.message_type, binding.from_role, binding.to_role) == (
        f"S-{kind}",
        kind,
        f"{kind}sender",
        f"{kind}receiver",
    )
    # no namespaces at all: the Action that is the type still finds it
    assert check_send(agreement, kind, None) is not None


def test_leaving_testing_needs_a_verified_test_or_the_operators_words() -> None:
    testing, verified = AgreementState.TESTING, AgreementState.VERIFIED_INACTIVE
    with pytest.raises(NotAgreed) as caught:
        check_state_change(testing, verified)
    assert caught.value.code == "test-not-verified"
    with pytest.raises(NotAgreed):
        check_state_change(testing, verified, forced="  ")
    assert check_state_change(testing, verified, verified_test="m1") is verified
    assert check_state_change(testing, verified, forced="tested by phone") is verified


def test_ended_is_reachable_from_every_state_and_left_only_forced_to_ordered() -> None:
    for state in AgreementState:
        if state is not AgreementState.ENDED:
            assert check_state_change(state, AgreementState.ENDED) is AgreementState.ENDED
        if state is not AgreementState.ORDERED:
            with pytest.raises(NotAgreed, match="allowed from ended: ordered"):
                check_state_change(AgreementState.ENDED, state, forced="words")
    with pytest.raises(NotAgreed, match="only forced"):  # ended by mistake: the words why
        check_state_change(AgreementState.ENDED, AgreementState.ORDERED, forced=" ")
    reopened = check_state_change(AgreementState.ENDED, AgreementState.ORDERED, forced="words")
    assert reopened is AgreementState.ORDERED
    with pytest.raises(NotAgreed, match="has ended"):
        check_send(_agreement(state=AgreementState.ENDED), "EPIKRISE", "1.2", answer=True)
