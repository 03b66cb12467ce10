"""A CPA package with an Encapsulation of application/x-gzip (NAV's behandlerkrav) has the
business document gzipped before it is encrypted; a binding without one goes as the global
``security.compress_payloads`` decides."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from engine_pair import Pair
from test_cpa_bindings import _cpa_agreement, _real_pom, _with_nav_cpa

from meldingstjener.devsites import Site
from meldingstjener.ebxml import unpackage
from meldingstjener.engine.outbound import submit
from meldingstjener.formats import Coded, Dialogmelding, Notat, build_dialogmelding, code_list
from meldingstjener.registry.agreements import AgreementState, PartnerAgreement
from meldingstjener.registry.cpa import agreement_for, parse_cpa
from meldingstjener.registry.store import agreement_from_row, agreement_to_row, save_agreement
from meldingstjener.security import cms_enveloped

GZIP_MAGIC = b"\x1f\x8b"


def _sent_plaintext(pair: Pair, message_id: str) -> bytes:
    """The sent payload decrypted with the hospital's key, not gunzipped."""
    sent = pair.message(pair.gp, message_id)
    mime = unpackage(str(sent.wire_content_type), pair.gp.store.payloads.path(str(sent.wire_ref)))
    [part] = mime.attachments.values()
    return cms_enveloped.decrypt(part.data, pair.hospital.keys.decryption_candidates, gunzip=False)


def test_navs_behandlerkrav_packages_are_gzipped(reference_dir: Path) -> None:
    cpa = parse_cpa((reference_dir / "samples" / "cpa" / "nav-qass-35065.xml").read_bytes())
    terms = agreement_for(cpa, "8141253")
    gzipped = {(b.service, b.message_type) for b in terms.outbound if b.gzip}
    assert ("BehandlerKrav", "OppgjorsMelding") in gzipped
    assert len(gzipped) < len(terms.outbound)  # not every package
    cpa = parse_cpa((reference_dir / "samples" / "cpa" / "nav-qass-31162.xml").read_bytes())
    assert any(b.gzip for b in agreement_for(cpa, cpa.parties[0].her_id or "").outbound)


def test_the_gzip_of_a_binding_is_kept_with_the_agreement(reference_dir: Path) -> None:
    cpa = parse_cpa((reference_dir / "samples" / "cpa" / "nav-qass-35065.xml").read_bytes())
    agreement = PartnerAgreement.from_terms(
        agreement_for(cpa, "8141253"), state=AgreementState.ACTIVE
    )
    row = agreement_to_row(agreement)
    assert agreement_from_row(row).bindings == agreement.bindings
    # a row stored before the flag was kept reads as not gzipped
    for entry in row.message_types:
        if isinstance(entry.get("binding"), dict):
            entry["binding"].pop("gzip", None)
    assert not any(b.gzip for b in agreement_from_row(row).bindings)


def test_a_real_pom_to_nav_goes_gzipped(pair: Pair, reference_dir: Path) -> None:
    assert not pair.gp.policy.compress_payloads
    _with_nav_cpa(pair, reference_dir)
    pom = _real_pom(pair, reference_dir)
    message_id = submit(pair.gp, pom, actor="test")
    assert _sent_plaintext(pair, message_id)[:2] == GZIP_MAGIC
    pair.run()
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"
    [received] = pair.inbound_messages(pair.hospital)
    assert pair.hospital.store.payloads.read_bytes(str(received.payload_ref)) == pom


def _innbygger_test(sender: Site, receiver: Site) -> bytes:
    theme = code_list("9152")
    note = Notat(tema_kodet=Coded(v="1", dn=theme.text("1"), s=theme.oid), tekst="Test")
    return build_dialogmelding(
        message_type="DIALOG_INNBYGGER_TEST",
        sender=sender.party(),
        receiver=receiver.party(),
        dialog=Dialogmelding(version="1.1", notater=(note,)),
    )


@pytest.mark.parametrize("compress", [False, True])
def test_a_helsenorge_binding_goes_as_the_global_setting_decides(
    pair: Pair, reference_dir: Path, compress: bool
) -> None:
    gp, hospital = pair.gp_site.address_her_id, pair.hospital_site.address_her_id
    agreement = _cpa_agreement(
        reference_dir,
        "helsenorge-CPA_93252.xml",
        "93238",
        gp,
        hospital,
        pair.hospital_site.endpoint,
    )
    assert agreement.bindings and not any(b.gzip for b in agreement.bindings)
    with pair.gp.store.unit_of_work() as uow:
        save_agreement(uow, agreement)
        uow.commit()
    pair.gp.policy = replace(pair.gp.policy, compress_payloads=compress)
    message_id = submit(pair.gp, _innbygger_test(pair.gp_site, pair.hospital_site), actor="test")
    assert (_sent_plaintext(pair, message_id)[:2] == GZIP_MAGIC) is compress
