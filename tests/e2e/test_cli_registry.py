"""The register commands as an operator runs them: ar import/search/show/sync, partners, cpa."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from meldingstjener.cli import registry_cmds  # noqa: F401  (registers the commands)
from meldingstjener.cli.app import app

runner = CliRunner()


def invoke(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = runner.invoke(app, ["--data-dir", str(data_dir), *args], env=env)
    return result.exit_code, result.output


@pytest.fixture
def imported(tmp_path: Path, reference_dir: Path) -> Path:
    ar = reference_dir / "samples" / "ar"
    code, output = invoke(
        tmp_path,
        "ar",
        "import",
        str(ar / "nav-NavCommunicationParty.json"),
        str(ar / "helsenorge-CommunicationDetailsRest_8141791.json"),
        str(ar / "ks-soap-get-communication-party-details-organzation-response.xml"),
    )
    assert code == 0, output
    assert "imported 3 parties from" in output
    return tmp_path


def test_ar_show_and_search(imported: Path) -> None:
    code, output = invoke(imported, "ar", "show", "79768", "--json")
    assert code == 0, output
    shown = json.loads(output)
    assert shown["name"] == "NAV IKT" and shown["organisation_number"] == "990983291"
    assert shown["signing_certificate"]["thumbprint"] == "42B5D65754297E5417182530CD2FE473D45CF7D5"

    code, output = invoke(imported, "ar", "search", "jonny ronhvode", "--json")
    assert code == 0, output
    assert json.loads(output)[0]["her_id"] == "8141791"

    code, output = invoke(imported, "ar", "search", "931796003", "--type", "service")
    assert code == 0, output
    assert "8143060" in output and "8143040" in output and "[inactive]" in output

    code, output = invoke(imported, "ar", "show", "1234")
    assert code == 1 and "not in the local register" in output
    code, output = invoke(imported, "ar", "search", "nav", "--type", "robot")
    assert code == 2 and "not a party type" in output


def test_ar_import_refuses_what_is_not_a_party(tmp_path: Path, reference_dir: Path) -> None:
    cert = reference_dir / "samples" / "ar" / "nav-NavSignCert.json"
    code, output = invoke(tmp_path, "ar", "import", str(cert))
    assert code == 1 and "refused" in output and "HER-id" in output


def test_partner_lifecycle(imported: Path) -> None:
    base = ("partners",)
    code, output = invoke(
        imported,
        *base,
        "add",
        "79768",
        "--our",
        "8142987",
        "--message-type",
        "DIALOG_FORESPORSEL=1.0,1.1",
        "--contact",
        "Drift;support;drift@example.no",
    )
    assert code == 0, output
    assert "source ar" in output  # the terms came from the local address register
    code, output = invoke(imported, *base, "add", "79768", "--our", "8142987")
    assert code == 1 and "exists" in output

    code, output = invoke(imported, *base, "set", "79768", "--our", "8142987", "--state", "active")
    assert code == 1 and "illegal-state-change" in output
    code, output = invoke(imported, *base, "set", "79768", "--our", "8142987", "--state", "testing")
    assert code == 0, output
    # leaving testing asks for a verified test exchange, or the operator's reason why not
    verified = ("set", "79768", "--our", "8142987", "--state", "verified-inactive")
    code, output = invoke(imported, *base, *verified)
    assert code == 1 and "test-not-verified" in output
    code, output = invoke(imported, *base, *verified, "--force", "tested with NAV by phone")
    assert code == 0, output
    code, output = invoke(imported, "log", "--json")
    [forced] = [json.loads(line) for line in output.splitlines() if "agreement-forced" in line]
    assert "tested with NAV by phone" in forced["detail"]
    code, output = invoke(imported, *base, "set", "79768", "--our", "8142987", "--state", "active")
    assert code == 0, output

    code, output = invoke(imported, *base, "show", "79768", "--our", "8142987", "--json")
    assert code == 0, output
    shown = json.loads(output)
    assert shown["state"] == "active" and shown["source"] == "ar"
    assert shown["message_types"] == {"DIALOG_FORESPORSEL": ["1.1", "1.0"]}
    assert shown["channel"] == "smtp" and shown["endpoint"] == "mottak-qass@test-es.nav.no"
    assert shown["contacts"][0]["email"] == "drift@example.no"

    code, output = invoke(imported, *base, "list")
    assert code == 0 and "79768" in output and "active" in output
    code, output = invoke(imported, *base, "add", "1", "--our", "2", "--message-type", "X")
    assert code == 2 and "TYPE=VERSION" in output

    # register terms follow the register's address; one the operator names is the agreement's
    code, output = invoke(
        imported,
        *base,
        "set",
        "79768",
        "--our",
        "8142987",
        "--json",
        "--endpoint",
        "edi@drift.example.no",
    )
    assert code == 0, output
    shown = json.loads(output)
    assert (shown["source"], shown["endpoint"]) == ("manual", "edi@drift.example.no")


def in_force(cpa: Path, directory: Path, **bounds: datetime) -> Path:
    """A copy of the sample ``cpa`` in force from a year ago to a year ahead (the samples' own
    dates pass), or between the ``start``/``end`` given."""
    now = datetime.now(UTC)
    start = bounds.get("start", now - timedelta(days=365)).isoformat()
    end = bounds.get("end", now + timedelta(days=365)).isoformat()
    text = cpa.read_text(encoding="utf-8")
    text = re.sub(r"(<(\w+:)?Start>)[^<]*(</)", rf"\g<1>{start}\g<3>", text, count=1)
    text = re.sub(r"(<(\w+:)?End>)[^<]*(</)", rf"\g<1>{end}\g<3>", text, count=1)
    copy = directory / f"in-force-{cpa.name}"
    copy.write_text(text, encoding="utf-8")
    return copy


def test_partner_from_cpa_and_cpa_show(tmp_path: Path, reference_dir: Path) -> None:
    sample = reference_dir / "samples" / "cpa" / "helsenorge-CPA_93252.xml"
    cpa = in_force(sample, tmp_path)
    code, output = invoke(tmp_path, "partners", "add", "93238", "--our", "93252", "--cpa", str(cpa))
    assert code == 0, output
    assert "source cpa" in output
    code, output = invoke(tmp_path, "partners", "list", "--json")
    listed = json.loads(output)
    assert listed[0]["cpa_id"] == "49391409-e528-4919-b4a3-9ccdab72c8c1"
    assert listed[0]["message_types"]  # the CPA's agreed types were stored
    assert listed[0]["valid_to"] is not None  # and its end, after which nothing is sent

    code, output = invoke(tmp_path, "cpa", "show", str(cpa), "--our", "93252", "--json")
    assert code == 0, output
    shown = json.loads(output)
    assert (shown["kind"], shown["id"]) == ("cpa", "49391409-e528-4919-b4a3-9ccdab72c8c1")
    assert {p["her_id"] for p in shown["parties"]} == {"93238", "93252"}
    assert shown["outbound"]
    code, output = invoke(tmp_path, "cpa", "show", str(cpa))
    assert code == 0 and "CPA 49391409" in output


def test_a_cpa_not_in_force_is_not_added(tmp_path: Path, reference_dir: Path) -> None:
    samples = reference_dir / "samples" / "cpa"
    # the sample as it is: it ended in 2017
    ended = samples / "helsenorge-CPA_93252.xml"
    code, output = invoke(
        tmp_path, "partners", "add", "93238", "--our", "93252", "--cpa", str(ended)
    )
    assert code == 1
    assert "CPA 49391409-e528-4919-b4a3-9ccdab72c8c1 ended 2017-02-05" in output
    assert "nothing could be sent under it" in output
    later = datetime.now(UTC) + timedelta(days=30)
    future = in_force(samples / "nav-qass-35065.xml", tmp_path, start=later)
    code, output = invoke(
        tmp_path, "partners", "add", "79768", "--our", "8141253", "--cpa", str(future)
    )
    assert code == 1 and f"CPA nav:qass:35065 is in force only from {later.isoformat()}" in output
    code, output = invoke(tmp_path, "partners", "list", "--json")
    assert code == 0 and json.loads(output) == []


def test_ar_sync_against_the_fake_register(tmp_path: Path) -> None:
    from meldingstjener.registry.fakes import FakeAddressRegister, FakeHelseId, serve

    helseid = FakeHelseId({"msh": "pw"})
    fake = FakeAddressRegister(guard=helseid.guard)
    fake.put_party({"herId": 500001, "name": "Tønsberg legevakt", "type": "Organization"})
    env = {"MELDINGSTJENER_HELSEID_CLIENT_SECRET": "pw"}
    with serve(helseid) as token_base, serve(fake) as url:
        args = ("ar", "sync", "--url", url, "--token-url", f"{token_base}/connect/token")
        code, output = invoke(tmp_path, *args, "--client-id", "msh", env=env)
        assert code == 0, output
        assert "wrote 1 parties" in output
        code, output = invoke(tmp_path, *args, "--client-id", "msh", env={})
        assert code == 2 and "CLIENT_SECRET" in output
        # neither HelseID nor MELDINGSTJENER_AR_TOKEN: the register's refusal is named
        code, output = invoke(tmp_path, "ar", "sync", "--url", url, env={})
        assert code == 1 and "wants a token (HTTP 401) and none was given" in output, output
        # an assertion's audience with a secret, which sends no assertion: said, not ignored
        code, output = invoke(
            tmp_path, *args, "--client-id", "msh", "--audience", "https://sts", env=env
        )
        assert code == 2 and "--audience is the client assertion's" in output
    code, output = invoke(tmp_path, "ar", "search", "tonsberg legvakt")
    assert code == 0 and "500001" in output


def test_ar_sync_and_import_name_the_parties_they_refuse(tmp_path: Path) -> None:
    from meldingstjener.bootstrap import open_store
    from meldingstjener.config import load_settings
    from meldingstjener.registry.fakes import FakeAddressRegister, serve

    fake = FakeAddressRegister()
    fake.put_party({"herId": 500001, "name": "Tønsberg legevakt", "type": "Organization"})
    fake.put_party({"herId": 500002, "name": "Ny tjeneste", "type": "ExternalService"})
    with serve(fake) as url:
        code, output = invoke(tmp_path, "ar", "sync", "--url", url)
    assert code == 0, output
    assert "wrote 1 parties" in output and "1 records refused" in output
    assert "refused HER-id 500002: communication party 500002 has an unknown type" in output
    store = open_store(load_settings(data_dir=tmp_path))
    with store.unit_of_work() as uow:  # the alert the servers raise, raised by hand too
        [alert] = uow.alerts.list(open_only=True, kind="register-parties-refused")
        assert "500002 (" in alert.summary
    store.database.dispose()

    export = tmp_path / "export.json"
    export.write_text(
        json.dumps(
            [
                {"herId": 500003, "name": "Legekontor", "type": "Organization"},
                {"herId": 500004, "name": "Ny tjeneste", "type": "ExternalService"},
            ]
        )
    )
    code, output = invoke(tmp_path, "ar", "import", str(export))
    assert code == 1, output  # not all of it went in
    assert f"imported 1 party from {export}" in output
    assert f"refused HER-id 500004 in {export}: communication party 500004" in output


def test_ar_sync_by_hand_waits_its_turn(tmp_path: Path) -> None:
    # A server is syncing the register (it holds the register-sync job): the command says so
    # and leaves the register alone; once the turn is free it syncs, and gives the turn back.
    from datetime import timedelta

    from meldingstjener.bootstrap import open_store
    from meldingstjener.config import load_settings
    from meldingstjener.engine.register_sync import REGISTER_SYNC
    from meldingstjener.registry.fakes import FakeAddressRegister, serve
    from meldingstjener.store.types import utcnow

    store = open_store(load_settings(data_dir=tmp_path))
    with store.unit_of_work() as uow:
        uow.jobs.schedule_if_absent(REGISTER_SYNC, utcnow(), dedup_key=REGISTER_SYNC)
        [held] = uow.jobs.claim_due("host:9/0", now=utcnow(), limit=1, lease=timedelta(minutes=2))
        uow.commit()
    fake = FakeAddressRegister()
    fake.put_party({"herId": 500001, "name": "Tønsberg legevakt", "type": "Organization"})
    with serve(fake) as url:
        code, output = invoke(tmp_path, "ar", "sync", "--url", url)
        assert code == 1 and "ar-sync-busy: not synced" in output and "host:9/0" in output
        assert fake.requests == []
        with store.unit_of_work() as uow:
            uow.jobs.release_unstarted([held])
            uow.commit()
        code, output = invoke(tmp_path, "ar", "sync", "--url", url)
        assert code == 0 and "wrote 1 parties" in output, output
    with store.unit_of_work() as uow:
        assert uow.jobs.claim_holder(REGISTER_SYNC) == (None, None)
    store.database.dispose()


def _client_key_file(tmp_path: Path) -> tuple[Path, Any]:
    """A HelseID client key as the self-service portal hands it out: a private JWK."""
    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import RSAAlgorithm

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "helseid-client.jwk"
    path.write_text(json.dumps({**RSAAlgorithm.to_jwk(key, as_dict=True), "kid": "k1"}))
    return path, key.public_key()


def test_ar_sync_with_private_key_jwt_and_dpop(tmp_path: Path) -> None:
    from jwt.algorithms import RSAAlgorithm

    from meldingstjener.registry.fakes import FakeAddressRegister, FakeHelseId, serve
    from meldingstjener.registry.helseid import jwk_thumbprint

    key_file, public_key = _client_key_file(tmp_path)
    helseid = FakeHelseId(keys={"msh": public_key}, require_dpop=True, nonce="n", api_nonce="a")
    fake = FakeAddressRegister(guard=helseid.guard)
    fake.put_party({"herId": 500001, "name": "Tønsberg legevakt", "type": "Organization"})
    with serve(helseid) as token_base, serve(fake) as url:
        args = ("ar", "sync", "--url", url, "--token-url", f"{token_base}/connect/token")
        code, output = invoke(tmp_path, *args, "--client-id", "msh", "--key-file", str(key_file))
        assert code == 0, output
        assert "wrote 1 parties" in output
        # the token was bound to the client key, asked for with the register's DPoP scope
        assert list(helseid.issued.values()) == [
            jwk_thumbprint(RSAAlgorithm.to_jwk(public_key, as_dict=True))
        ]
        assert helseid.scopes == ["nhn:cp-api/access-v2-dpop"]
        # --no-dpop: HelseID (here: requiring DPoP) refuses, and the command says why
        code, output = invoke(
            tmp_path, *args, "--client-id", "msh", "--key-file", str(key_file), "--no-dpop"
        )
        assert code == 1 and "refused client msh: HTTP 400 invalid_dpop_proof" in output
        public_only = tmp_path / "public.jwk"
        public_only.write_text(json.dumps({"kty": "RSA", "n": "AQAB", "e": "AQAB"}))
        code, output = invoke(tmp_path, *args, "--client-id", "msh", "--key-file", str(public_only))
        assert code == 2 and "is public) (helseid-key)" in output


def test_partner_terms_from_the_cppa_service(tmp_path: Path, reference_dir: Path) -> None:
    from meldingstjener.registry.fakes import FakeCppa, FakeHelseId, serve

    key_file, public_key = _client_key_file(tmp_path)
    helseid = FakeHelseId(keys={"msh": public_key}, nonce="n")
    cppa = FakeCppa(guard=helseid.guard)
    sample = reference_dir / "samples" / "cpa" / "helsenorge-CPA_93252.xml"
    cpa = in_force(sample, tmp_path).read_bytes()
    cppa.put_agreement("49391409-e528-4919-b4a3-9ccdab72c8c1", cpa, ("93252", "93238"))
    with serve(helseid) as token_base, serve(cppa) as url:
        code, output = invoke(
            tmp_path,
            *("partners", "add", "93238", "--our", "93252", "--cppa-url", url),
            *("--token-url", f"{token_base}/connect/token", "--client-id", "msh"),
            *("--key-file", str(key_file)),
        )
        assert code == 0, output
        assert "source cpa" in output
        assert helseid.scopes == ["nhn:cppa/access-with-dpop"]  # the service's DPoP scope
        # a partner the service has no CPA or CPP for, nor the local register: manual terms
        code, output = invoke(
            tmp_path,
            *("partners", "add", "5555", "--our", "93252", "--cppa-url", url),
            *("--token-url", f"{token_base}/connect/token", "--client-id", "msh"),
            *("--key-file", str(key_file), "--channel", "smtp"),
        )
        assert code == 0, output
        assert "no CPA with the counterparty" in output and "source manual" in output
        # what the service cannot say stops the command: no agreement is made on a guess
        cppa.put_agreement("cpa-of-others", cpa, ("93252", "4444"))  # names 93238, not 4444
        sts = ("--token-url", f"{token_base}/connect/token", "--client-id", "msh")
        code, output = invoke(
            tmp_path,
            *("partners", "add", "4444", "--our", "93252", "--cppa-url", url, *sts),
            *("--key-file", str(key_file)),
        )
        assert (
            code == 1
            and "cppa-wrong-party: cannot take terms" in output
            and "does not name HER-id 4444" in output
        )
        cppa.put_agreement("cpa-not-ours", cpa, ("5000", "93238"))  # names 93238, not us (5000)
        code, output = invoke(
            tmp_path,
            *("partners", "add", "93238", "--our", "5000", "--cppa-url", url, *sts),
            *("--key-file", str(key_file)),
        )
        assert code == 1 and "does not name HER-id 5000" in output
        code, output = invoke(
            tmp_path,
            *("partners", "add", "4445", "--our", "93252", "--cppa-url", url),
            env={"MELDINGSTJENER_CPPA_TOKEN": "not-a-token"},
        )
        assert code == 1 and "cppa-unauthorised: cannot take terms" in output
        # a CPA the service has that is no longer in force is passed over, as a missing one
        cppa.put_agreement(
            "49391409-e528-4919-b4a3-9ccdab72c8c1", sample.read_bytes(), ("93252", "93238")
        )
        code, output = invoke(
            tmp_path / "elsewhere",
            *("partners", "add", "93238", "--our", "93252", "--cppa-url", url, *sts),
            *("--key-file", str(key_file)),
        )
        assert code == 0, output
        assert "CPA 49391409-e528-4919-b4a3-9ccdab72c8c1 is not in force" in output
        assert "source manual" in output
        cppa.down = True
        code, output = invoke(
            tmp_path,
            *("partners", "add", "4446", "--our", "93252", "--cppa-url", url, *sts),
            *("--key-file", str(key_file)),
        )
        assert (
            code == 1 and "cppa-unavailable: cannot take terms" in output and "HTTP 503" in output
        )
        code, output = invoke(tmp_path, "partners", "add", "abc", "--cppa-url", url)
        assert code == 2 and "HER-id" in output
    code, output = invoke(tmp_path, "partners", "list", "--json")
    listed = {a["counterparty_her_id"]: a for a in json.loads(output)}
    assert set(listed) == {"93238", "5555"}
    assert listed["93238"]["cpa_id"] == "49391409-e528-4919-b4a3-9ccdab72c8c1"
    assert listed["5555"]["source"] == "manual"


def test_commands_run_as_a_program(tmp_path: Path, reference_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MELDINGSTJENER_")}
    program = (
        "from meldingstjener.cli import registry_cmds; from meldingstjener.cli.app import main; "
        "main()"
    )
    sample = reference_dir / "samples" / "ar" / "nav-NavCommunicationParty.json"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", program, "--data-dir", str(tmp_path), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )

    assert run("ar", "import", str(sample)).returncode == 0
    found = run("ar", "search", "NAV", "--json")
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)[0]["her_id"] == "79768"


def test_ar_show_names_a_replaced_signing_certificate_and_it_can_be_forgotten(
    imported: Path,
) -> None:
    import dataclasses

    from cryptography.hazmat.primitives.serialization import Encoding

    from meldingstjener.bootstrap import open_store
    from meldingstjener.config import load_settings
    from meldingstjener.registry.certificates import certificate_from_der
    from meldingstjener.registry.store import party_from_row, save_parties
    from meldingstjener.security.devpki import init_pki

    # two certificates of NAV IKT's organisation (one of another is refused: see
    # test_registry_certificate_owner.py)
    pki = init_pki(
        imported / "pki",
        ["7001", "7002"],
        organisation_numbers=dict.fromkeys(("7001", "7002"), "990983291"),
    )
    first, second = (
        certificate_from_der(pki.parties[h].signing.certificate.public_bytes(Encoding.DER))
        for h in ("7001", "7002")
    )
    store = open_store(load_settings(data_dir=imported))
    for certificate in (first, second):  # the register names one, then its successor
        with store.unit_of_work() as uow:
            row = uow.parties.get("79768")
            assert row is not None
            party = dataclasses.replace(party_from_row(row), signing_certificate=certificate)
            save_parties(uow, [party])
            uow.commit()
    store.database.dispose()

    code, output = invoke(imported, "ar", "show", "79768", "--json")
    assert code == 0, output
    shown = json.loads(output)
    assert shown["signing_certificate"]["thumbprint"] == second.thumbprint
    assert shown["previous_signing_certificate"]["thumbprint"] == first.thumbprint
    assert shown["previous_signing_certificate"]["replaced_at"]

    code, output = invoke(imported, "ar", "forget-previous-certificate", "79768")
    assert code == 0 and "no longer accepted" in output, output
    code, output = invoke(imported, "ar", "show", "79768", "--json")
    assert "previous_signing_certificate" not in json.loads(output)
    code, output = invoke(imported, "ar", "forget-previous-certificate", "79768")
    assert code == 0 and "nothing to do" in output
    code, output = invoke(imported, "ar", "forget-previous-certificate", "1234")
    assert code == 1 and "not in the local register" in output
