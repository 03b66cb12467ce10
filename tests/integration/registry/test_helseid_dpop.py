"""The register clients sign in to HelseID with private_key_jwt and call the APIs with
DPoP-bound tokens, over real HTTP against the fakes, nonces and refusals included."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from meldingstjener.registry.ar_client import ArClient, ArUnavailable
from meldingstjener.registry.auth import (
    ClientCredentialsTokenProvider,
    Retry,
    StaticToken,
    TokenError,
)
from meldingstjener.registry.fakes import FakeAddressRegister, FakeHelseId, serve
from meldingstjener.registry.helseid import (
    ClientAssertion,
    ClientKey,
    DPoPProver,
    audience_for,
)

HER_ID = "500001"
CLIENT_KEY = ClientKey(ec.generate_private_key(ec.SECP256R1()), "ES256", "key-1")


@dataclass
class Setup:
    helseid: FakeHelseId
    register: FakeAddressRegister
    token_url: str
    register_url: str
    sent: list[httpx.Request]

    def client(self, key: ClientKey = CLIENT_KEY, *, dpop: bool = True) -> ArClient:
        http = httpx.Client(event_hooks={"request": [self.sent.append]}, timeout=5)
        tokens = ClientCredentialsTokenProvider(
            self.token_url,
            "msh",
            client_assertion=ClientAssertion("msh", audience_for(self.token_url), key),
            dpop=DPoPProver(key) if dpop else None,
            http=http,
        )
        return ArClient(self.register_url, tokens, http=http)


@pytest.fixture
def setup() -> Iterator[Setup]:
    helseid = FakeHelseId(
        keys={"msh": CLIENT_KEY.private_key.public_key()},
        nonce="sts-nonce",
        api_nonce="api-nonce",
    )
    register = FakeAddressRegister(guard=helseid.guard)
    register.put_party({"herId": int(HER_ID), "name": "Tønsberg legevakt", "type": "Organization"})
    with serve(helseid) as sts, serve(register) as api:
        yield Setup(helseid, register, f"{sts}/connect/token", api, [])


def test_a_dpop_bound_token_reads_the_register_after_both_nonce_challenges(setup: Setup) -> None:
    client = setup.client()
    assert client.party(HER_ID).name == "Tønsberg legevakt"
    # token request, again with HelseID's nonce; API call, again with the API's nonce
    assert [(r.method, r.url.path) for r in setup.sent] == [
        ("POST", "/connect/token"),
        ("POST", "/connect/token"),
        ("GET", f"/api/v1/communicationparty/{HER_ID}"),
        ("GET", f"/api/v1/communicationparty/{HER_ID}"),
    ]
    [token] = setup.helseid.issued
    assert setup.helseid.issued[token] == CLIENT_KEY.thumbprint()
    api_call = setup.sent[-1]
    assert api_call.headers["Authorization"] == f"DPoP {token}" and "DPoP" in api_call.headers
    # the nonces are kept: the next call needs no challenge
    client.party(HER_ID)
    assert len(setup.sent) == 5
    client.close()


def test_a_stolen_token_is_refused_without_the_key(setup: Setup) -> None:
    setup.client().party(HER_ID)
    [token] = setup.helseid.issued
    # shown as a bearer token
    with pytest.raises(ArUnavailable) as as_bearer:
        ArClient(setup.register_url, StaticToken(token)).party(HER_ID)
    assert as_bearer.value.code == "ar-unauthorised"
    assert setup.helseid.refusals[-1] == "a DPoP-bound token needs DPoP"
    # with proofs made by another key
    thief = ClientKey(ec.generate_private_key(ec.SECP256R1()), "ES256")
    prover = DPoPProver(thief)
    prover.remember_nonce(setup.register_url, "api-nonce")
    url = f"{setup.register_url}/api/v1/communicationparty/{HER_ID}"
    proof = prover.proof("GET", url, access_token=token)
    answer = httpx.get(url, headers={"Authorization": f"DPoP {token}", "DPoP": proof})
    assert answer.status_code == 401 and setup.helseid.refusals[-1] == "signed by another key"


def test_a_host_whose_clock_runs_ahead_of_helseids_still_signs_in() -> None:
    # HelseID refuses a client assertion whose exp is more than 60 s ahead of its own clock;
    # the assertion's short life leaves room for a host 20 s ahead.
    import time

    helseid = FakeHelseId(
        keys={"msh": CLIENT_KEY.private_key.public_key()}, clock=lambda: time.time() - 20
    )
    with serve(helseid) as sts:
        tokens = ClientCredentialsTokenProvider(
            f"{sts}/connect/token",
            "msh",
            client_assertion=ClientAssertion(
                "msh", audience_for(f"{sts}/connect/token"), CLIENT_KEY
            ),
        )
        assert tokens.access_token() in helseid.issued
        assert helseid.refusals == []


def test_a_client_with_the_wrong_key_gets_no_token(setup: Setup) -> None:
    stranger = ClientKey(ec.generate_private_key(ec.SECP256R1()), "ES256", "key-1")
    with pytest.raises(TokenError) as refused:
        setup.client(stranger).party(HER_ID)
    assert refused.value.code == "helseid-token" and "invalid_client" in str(refused.value)
    assert setup.helseid.refusals[-1].startswith("client assertion refused")
    assert setup.helseid.issued == {}


def test_a_token_the_api_dropped_is_replaced_once(setup: Setup) -> None:
    client = setup.client()
    client.party(HER_ID)
    [first] = setup.helseid.issued
    setup.helseid.revoke(first)
    assert client.party(HER_ID).her_id == HER_ID
    [second] = setup.helseid.issued
    assert second != first


def test_a_new_token_that_meets_a_new_nonce_gets_through(setup: Setup) -> None:
    # The API dropped the token and moved on to a new nonce at once: the retry with the new
    # token is challenged for the nonce, and that is answered too.
    client = setup.client()
    client.party(HER_ID)
    [first] = setup.helseid.issued
    setup.helseid.revoke(first)
    setup.helseid.api_nonce = "api-nonce-2"
    before = len(setup.register.requests)
    assert client.party(HER_ID).her_id == HER_ID
    # refused token, refused nonce, through
    assert len(setup.register.requests) - before == 3


def test_a_token_server_without_dpop_hands_out_a_bearer_token_that_is_used_as_one(
    setup: Setup,
) -> None:
    setup.helseid.dpop_supported = False
    client = setup.client()
    assert client.party(HER_ID).her_id == HER_ID
    [token] = setup.helseid.issued
    assert setup.helseid.issued[token] is None
    assert setup.sent[-1].headers["Authorization"] == f"Bearer {token}"
    assert "DPoP" not in setup.sent[-1].headers


def test_a_nonce_announced_on_an_answer_is_used_without_a_challenge() -> None:
    # RFC 9449, section 8: a server may send the next nonce on any answer.
    helseid = FakeHelseId(keys={"msh": CLIENT_KEY.private_key.public_key()}, api_nonce="a1")
    register = FakeAddressRegister()
    register.put_party({"herId": int(HER_ID), "name": "Legevakt", "type": "Organization"})
    with serve(helseid) as sts, serve(helseid.guarded(register)) as api:
        setup = Setup(helseid, register, f"{sts}/connect/token", api, [])
        client = setup.client()
        client.party(HER_ID)  # challenged once for a1
        helseid.api_nonce_next = "a2"  # announced on the answers from now, a1 still taken
        client.party(HER_ID)
        helseid.api_nonce, helseid.api_nonce_next = "a2", None  # a1 is no longer taken
        before = len(setup.sent)
        assert client.party(HER_ID).her_id == HER_ID
        assert len(setup.sent) - before == 1  # no challenge: a2 was already known
        client.close()


def test_a_token_the_api_keeps_refusing_is_replaced_once_only(setup: Setup) -> None:
    client = setup.client()
    client.party(HER_ID)
    before_tokens, before_calls = len(setup.helseid.issued), len(setup.register.requests)
    setup.helseid.revoke_all = True  # every token refused as soon as it is shown
    with pytest.raises(ArUnavailable) as refused:
        client.party(HER_ID)
    assert refused.value.code == "ar-unauthorised"
    assert len(setup.register.requests) - before_calls == 2  # the refused call and one retry
    assert len(setup.helseid.issued) - before_tokens == 1  # one new token, not one per try


def test_a_challenge_for_a_nonce_learnt_meanwhile_is_still_answered(setup: Setup) -> None:
    # Two requests in flight: the other one learnt the API's new nonce first. This one was
    # sent without it and must still be retried, although the nonce is no longer news.
    client = setup.client()
    client.party(HER_ID)
    tokens = client._tokens
    url = f"{setup.register_url}/api/v1/communicationparty/{HER_ID}"
    setup.helseid.api_nonce = "a2"
    held = tokens.authorization("GET", url)  # made while a1 was the nonce we knew
    client.party(HER_ID)  # the other request: challenged, learns a2
    late = httpx.get(url, headers=held)
    assert late.status_code == 401
    assert tokens.after_response(late) is Retry.NONCE
