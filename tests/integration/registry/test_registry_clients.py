"""The AR and CPPA REST clients against the local fakes, and the CPA -> CPP -> AR fallback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from meldingstjener.registry import NotAgreed, TermsSource, parse_party_json
from meldingstjener.registry.ar_client import ArClient, ArUnavailable
from meldingstjener.registry.auth import ClientCredentialsTokenProvider, StaticToken, TokenError
from meldingstjener.registry.cppa_client import CppaClient, fetch_terms
from meldingstjener.registry.errors import ArPartyNotFound
from meldingstjener.registry.fakes import (
    FakeAddressRegister,
    FakeCppa,
    FakeHelseId,
    fixed_bearer,
    serve,
)

NAV_HER_ID = "79768"


@pytest.fixture
def helseid() -> Iterator[tuple[FakeHelseId, str]]:
    # msh has a key registered too: a forged assertion is refused for its signature
    key = ec.generate_private_key(ec.SECP256R1())
    fake = FakeHelseId({"msh": "secret"}, keys={"msh": key.public_key()})
    with serve(fake) as url:
        yield fake, f"{url}/connect/token"


def test_token_is_fetched_once_and_reused_until_it_expires(
    helseid: tuple[FakeHelseId, str],
) -> None:
    fake, token_url = helseid
    now = [0.0]
    tokens = ClientCredentialsTokenProvider(
        token_url, "msh", client_secret="secret", clock=lambda: now[0]
    )
    first = tokens.access_token()
    assert tokens.access_token() == first and fake.requests == 1
    now[0] = fake.expires_in  # past expiry (minus the safety margin)
    assert tokens.access_token() != first and fake.requests == 2
    assert fake.is_valid(first) and not fake.is_valid("made-up")


def test_wrong_secret_and_assertion_clients(helseid: tuple[FakeHelseId, str]) -> None:
    fake, token_url = helseid
    with pytest.raises(TokenError) as refused:
        ClientCredentialsTokenProvider(token_url, "msh", client_secret="wrong").access_token()
    assert refused.value.code == "helseid-token" and "invalid_client" in str(refused.value)
    # private_key_jwt: an assertion that is no JWT signed by the client's key is refused
    # (test_helseid_dpop.py has the real ones)
    with pytest.raises(TokenError) as forged:
        ClientCredentialsTokenProvider(
            token_url, "msh", client_assertion=lambda: "header.payload.signature"
        ).access_token()
    assert "invalid_client" in str(forged.value)
    assert fake.refusals[-1].startswith("client assertion refused")


def test_ar_client_reads_party_certificates_and_errors(ar_samples: Path) -> None:
    fake = FakeAddressRegister(guard=fixed_bearer("good"))
    fake.put_party(
        json.loads((ar_samples / "nav-NavCommunicationParty.json").read_text("utf-8")),
        signing=json.loads((ar_samples / "nav-NavSignCert.json").read_text("utf-8")),
    )
    with serve(fake) as url:
        client = ArClient(url, StaticToken("good"))
        party = client.party(NAV_HER_ID)
        assert party.name == "NAV IKT" and party.organisation_number == "990983291"
        assert party.signing_certificate_der is not None  # from /certificate/79768/signing
        assert party.encryption_certificate is not None
        assert party.encryption_certificate.der is None  # the fake has no encryption cert
        export = client.export()
        assert (export.last_sequence_number, export.her_ids) == (1, (NAV_HER_ID,))
        assert [e.her_id for e in client.events(1)] == [NAV_HER_ID]
        assert client.events(2) == []
        with pytest.raises(ArPartyNotFound):
            client.party("1234567")
        with pytest.raises(ArUnavailable) as unauthorised:
            ArClient(url, StaticToken("bad")).party(NAV_HER_ID)
        assert unauthorised.value.code == "ar-unauthorised"
        client.close()
    with pytest.raises(ArUnavailable) as down:
        ArClient(url, StaticToken("good"), timeout=2).party(NAV_HER_ID)
    assert down.value.code == "ar-unavailable"


@pytest.fixture
def cppa(cpa_samples: Path) -> Iterator[tuple[FakeCppa, CppaClient]]:
    fake = FakeCppa(guard=fixed_bearer("t"))
    # The Helsenorge sample CPA is between HER-ids 93238 and 93252.
    fake.put_agreement(
        "cpa-93252", (cpa_samples / "helsenorge-CPA_93252.xml").read_bytes(), ("93252", "93238")
    )
    with serve(fake) as url:
        client = CppaClient(url, StaticToken("t"))
        yield fake, client
        client.close()


def test_cppa_client_fetches_cpa_cpp_and_reports_none(
    cppa: tuple[FakeCppa, CppaClient], cpa_samples: Path
) -> None:
    fake, client = cppa
    fake.put_profile("93238", (cpa_samples / "helsenorge-CPP_93238.xml").read_bytes())
    assert client.agreement("cpa-93252") is not None
    assert client.agreement("unknown") is None
    profile = client.profile("93238")
    assert profile is not None and profile.kind == "cpp"
    assert client.profile("1") is None
    fake.down = True
    from meldingstjener.registry.cppa_client import CppaUnavailable

    with pytest.raises(CppaUnavailable):
        client.profile("93238")


def test_fallback_cpa_then_cpp_then_register(
    cppa: tuple[FakeCppa, CppaClient], cpa_samples: Path, ar_samples: Path
) -> None:
    fake, client = cppa
    ours, theirs = "93252", "93238"  # the two parties of the Helsenorge sample CPA
    nav = parse_party_json((ar_samples / "nav-NavCommunicationParty.json").read_bytes())
    register = {NAV_HER_ID: nav}

    terms, source = fetch_terms(ours, theirs, cppa=client, ar_party=register.get)
    assert source is TermsSource.CPA
    assert terms.cpa_id == "49391409-e528-4919-b4a3-9ccdab72c8c1"
    assert terms.message_types()  # the CPA names message types with versions

    fake.pairs.clear()
    fake.put_profile(theirs, (cpa_samples / "helsenorge-CPP_93238.xml").read_bytes())
    cpp_terms, cpp_source = fetch_terms(ours, theirs, cppa=client, ar_party=register.get)
    assert cpp_source is TermsSource.CPP
    assert "APPREC" in cpp_terms.message_types()
    assert "no CPA with the counterparty" in cpp_terms.notes

    # A profile that belongs to another HER-id is not used for this one.
    fake.put_profile(NAV_HER_ID, (cpa_samples / "helsenorge-CPP_93238.xml").read_bytes())
    ar_terms, ar_source = fetch_terms(ours, NAV_HER_ID, cppa=client, ar_party=register.get)
    assert ar_source is TermsSource.AR and ar_terms.any_message_type
    assert any("not the profile of HER-id 79768" in note for note in ar_terms.notes)
    assert ar_terms.default_channel is not None
    assert ar_terms.default_channel.endpoint == "mottak-qass@test-es.nav.no"

    fake.down = True  # the CPPA service being down also falls back, with the reason kept
    down_terms, down_source = fetch_terms(ours, NAV_HER_ID, cppa=client, ar_party=register.get)
    assert down_source is TermsSource.AR
    assert any("CPA lookup failed" in note for note in down_terms.notes)

    with pytest.raises(NotAgreed) as nothing:
        fetch_terms(ours, "5555", cppa=client, ar_party=register.get)
    assert nothing.value.code == "no-agreement-source"
    assert "CPA lookup failed" in str(nothing.value)  # why the service gave nothing, kept
