"""A CPA that does not follow the S-<type> convention (NAV's) names the envelope: a real POM
goes as BehandlerKrav/OppgjorsMelding between Behandler and KontrollUtbetaler, and the AppRec
answering it as NAV's Svarmelding in the same service.

The two engines of ``engine_pair`` play the CPA's parties: the GP office is the Behandler
(8141253 in the CPA), the hospital's service NAV (79768); the agreements are the CPA's, seen
from each side, with the HER-ids and endpoints of the pair.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from engine_pair import Pair, sent_header

from meldingstjener.engine import receipts
from meldingstjener.engine.outbound import submit
from meldingstjener.registry.agreements import AgreementState, PartnerAgreement
from meldingstjener.registry.cpa import agreement_for, parse_cpa
from meldingstjener.registry.store import save_agreement

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
