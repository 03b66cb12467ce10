"""``partners set`` taking terms anew (a renewed CPA), narrowing a CPA's types, the certificate
notes, the ``cpa-expiring`` alert and the codes of the refusals (found in review)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from meldingstjener.cli import registry_cmds  # noqa: F401  (registers the commands)
from meldingstjener.cli.app import app

runner = CliRunner()
OURS, NAV = "8141253", "79768"
DIALOG = (
    "http://www.kith.no/xmlstds/msghead/2006-05-24",
    "http://www.kith.no/xmlstds/dialog/2006-10-11",
)


def invoke(data_dir: Path, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["--data-dir", str(data_dir), *args], env={})
    return result.exit_code, result.output


def nav_cpa(reference_dir: Path, directory: Path, cpaid: str, end: datetime) -> Path:
    """NAV's sample CPA under ``cpaid``, in force from a year ago until ``end``."""
    text = (reference_dir / "samples" / "cpa" / "nav-qass-35065.xml").read_text("utf-8")
    text = text.replace('cpaid="nav:qass:35065"', f'cpaid="{cpaid}"')
    start = (datetime.now(UTC) - timedelta(days=365)).isoformat()
    text = re.sub(r"(<(\w+:)?Start>)[^<]*(</)", rf"\g<1>{start}\g<3>", text, count=1)
    text = re.sub(r"(<(\w+:)?End>)[^<]*(</)", rf"\g<1>{end.isoformat()}\g<3>", text, count=1)
    path = directory / f"{cpaid.replace(':', '_')}.xml"
    path.write_text(text, "utf-8")
    return path


@pytest.fixture
def nav(tmp_path: Path, reference_dir: Path) -> Path:
    """An active agreement with NAV under a CPA ending in 10 days."""
    ar = reference_dir / "samples" / "ar" / "nav-NavCommunicationParty.json"
    assert invoke(tmp_path, "ar", "import", str(ar))[0] == 0
    ending = nav_cpa(reference_dir, tmp_path, "nav:qass:35065", datetime.now(UTC) + timedelta(10))
    code, output = invoke(tmp_path, "partners", "add", NAV, "--our", OURS, "--cpa", str(ending))
    assert code == 0, output
    for state in ("testing", "verified-inactive", "active"):
        step = ("partners", "set", NAV, "--our", OURS, "--state", state)
        assert invoke(tmp_path, *step, "--force", "tested by phone")[0] == 0
    return tmp_path


def _store(data_dir: Path):  # type: ignore[no-untyped-def]
    from meldingstjener.bootstrap import open_store
    from meldingstjener.config import load_settings

    return open_store(load_settings(data_dir=data_dir))


def _check(data_dir: Path, *, now: datetime | None = None) -> str:
    """What the engine's gate says of a dialog document to NAV: the binding, or the code."""
    from meldingstjener.registry.agreements import NotAgreed
    from meldingstjener.registry.policy import check_agreement
    from meldingstjener.registry.store import agreement_from_row

    with _store(data_dir).unit_of_work() as uow:
        agreement = agreement_from_row(uow.agreements.for_pair(OURS, NAV))
    try:
        binding = check_agreement(
            agreement, OURS, NAV, "DIALOG_NOTAT", "1.0", now=now, namespaces=DIALOG
        )
    except NotAgreed as exc:
        return exc.code
    assert binding is not None
    return binding.message_type


def test_a_renewed_cpa_is_taken_by_partners_set(nav: Path, reference_dir: Path) -> None:
    from meldingstjener.engine.certificates import judge_agreement_end

    store = _store(nav)
    with store.unit_of_work() as uow:  # the daily check: the CPA ends within 30 days
        judge_agreement_end(uow, uow.agreements.for_pair(OURS, NAV), datetime.now(UTC))
        uow.commit()
    with store.unit_of_work() as uow:
        [alert] = uow.alerts.list(open_only=True, kind="cpa-expiring")
        assert "nav:qass:35065" in alert.summary and "partners set --cpa" in alert.summary
    # after its end nothing is sent
    assert _check(nav, now=datetime.now(UTC) + timedelta(days=11)) == "agreement-not-active"

    later = datetime.now(UTC) + timedelta(days=700)
    renewed = nav_cpa(reference_dir, nav, "nav:qass:40000", later)
    code, output = invoke(nav, "partners", "add", NAV, "--our", OURS, "--cpa", str(renewed))
    assert code == 1 and "agreement-exists:" in output
    code, output = invoke(nav, "partners", "set", NAV, "--our", OURS, "--cpa", str(renewed))
    assert code == 0, output
    assert "CPA id: nav:qass:35065 -> nav:qass:40000" in output
    assert "valid to: " in output and "agreement with 79768 is active" in output

    assert _check(nav, now=datetime.now(UTC) + timedelta(days=11)) == "Henvendelse"
    with store.unit_of_work() as uow:
        assert uow.alerts.list(open_only=True, kind="cpa-expiring") == []


def test_partners_set_refuses_a_cpa_that_has_ended(nav: Path, reference_dir: Path) -> None:
    ended = nav_cpa(reference_dir, nav, "nav:qass:1", datetime.now(UTC) - timedelta(days=1))
    code, output = invoke(nav, "partners", "set", NAV, "--our", OURS, "--cpa", str(ended))
    assert code == 1 and "cpa-ended: CPA nav:qass:1 ended" in output


def test_narrowing_a_cpa_agreement_narrows_its_bindings(nav: Path) -> None:
    assert _check(nav) == "Henvendelse"
    code, output = invoke(
        nav, "partners", "set", NAV, "--our", OURS, "--message-type", "Sykmelding=1.1"
    )
    assert code == 0, output
    assert _check(nav) == "message-type-not-agreed"
    code, output = invoke(
        nav, "partners", "set", NAV, "--our", OURS, "--message-type", "DIALOG_NOTAT=1.0"
    )
    assert code == 2 and "type-not-in-cpa:" in output and "partners set --cpa" in output


def test_narrowing_and_a_channel_in_one_call_keep_the_narrowing(nav: Path) -> None:
    code, output = invoke(
        nav,
        *("partners", "set", NAV, "--our", OURS, "--message-type", "Sykmelding=1.1"),
        *("--channel", "http", "--endpoint", "https://nav.example.no/ebms"),
    )
    assert code == 0, output
    assert _check(nav) == "message-type-not-agreed"


def test_a_cpa_certificate_the_register_does_not_have_is_noted(
    tmp_path: Path, reference_dir: Path
) -> None:
    from meldingstjener.registry.fakes import FakeAddressRegister

    ar = reference_dir / "samples" / "ar"
    party = json.loads((ar / "nav-NavCommunicationParty.json").read_text())
    sign = json.loads((ar / "nav-NavSignCert.json").read_text())
    party["currentEncryptionCertificate"] = party["currentSigningCertificate"]
    fake = FakeAddressRegister()
    fake.put_party(party, signing=sign, encryption=sign)  # the register: another encryption cert
    from meldingstjener.registry.fakes import serve

    with serve(fake) as url:
        result = runner.invoke(
            app,
            ["--data-dir", str(tmp_path), "ar", "sync", "--url", url],
            env={"MELDINGSTJENER_AR_TOKEN": "x"},
        )
        assert result.exit_code == 0, result.output
    cpa = nav_cpa(reference_dir, tmp_path, "nav:qass:35065", datetime.now(UTC) + timedelta(99))
    note = (
        "note: CPA nav:qass:35065 names HER-id 79768's encryption certificate "
        "252E4186D078861C480941E55FB7B7CBF558A6C8, the local register's is "
        "42B5D65754297E5417182530CD2FE473D45CF7D5"
    )
    code, output = invoke(tmp_path, "partners", "add", NAV, "--our", OURS, "--cpa", str(cpa))
    assert code == 0 and note in output, output
    code, output = invoke(tmp_path, "cpa", "show", str(cpa), "--our", OURS)
    assert code == 0 and note in output, output
    assert "signing certificate" not in output  # the signing certificates agree


def test_every_refusal_of_partners_carries_a_code(nav: Path, reference_dir: Path) -> None:
    other = reference_dir / "samples" / "cpa" / "nav-qass-35065.xml"
    future = nav_cpa(reference_dir, nav, "nav:qass:2", datetime.now(UTC) + timedelta(days=99))
    text = future.read_text("utf-8")
    start = (datetime.now(UTC) + timedelta(days=5)).isoformat()
    future.write_text(re.sub(r"(<(\w+:)?Start>)[^<]*(</)", rf"\g<1>{start}\g<3>", text, count=1))
    cases = [
        (("add", NAV, "--cpa", str(other)), "agreement-exists:"),
        (("set", NAV, "--cpa", str(future)), "cpa-not-yet-in-force:"),
        (
            (
                "add",
                "93238",
                "--cpa",
                str(nav_cpa(reference_dir, nav, "x:1", datetime.now(UTC) + timedelta(days=9))),
            ),
            "wrong-counterparty:",
        ),
        (("set", "93238", "--state", "testing"), "no-agreement:"),
        (("show", "93238"), "no-agreement:"),
        (("set", NAV, "--state", "ordered"), "illegal-state-change:"),
    ]
    for args, code_text in cases:
        code, output = invoke(nav, "partners", *args, "--our", OURS)
        assert code == 1 and code_text in output, (args, output)


def test_an_agreement_ended_by_mistake_goes_back_to_ordered_only_forced(nav: Path) -> None:
    """Ended is final to the routine, and ``partners add`` refuses a pair with an agreement: a
    mistyped ``--state ended`` cut the partner off for good. Ordered, forced with the reason
    (kept in the log), starts the routine again; every other step from ended is refused."""
    base = ("partners", "set", NAV, "--our", OURS)
    assert invoke(nav, *base, "--state", "ended")[0] == 0
    code, output = invoke(nav, *base, "--state", "ordered")
    assert code == 1 and "illegal-state-change:" in output and "--force" in output
    code, output = invoke(nav, *base, "--state", "ordered", "--force", "  ")
    assert code == 1 and "illegal-state-change:" in output
    code, output = invoke(nav, *base, "--state", "testing", "--force", "came back")
    assert code == 1 and "illegal-state-change:" in output and "--state ordered" in output

    code, output = invoke(nav, *base, "--state", "ordered", "--force", "ended by mistake")
    assert code == 0, output
    assert "agreement with 79768 is ordered" in output
    code, output = invoke(nav, "log", "--json")
    [forced] = [
        json.loads(line)
        for line in output.splitlines()
        if "agreement-forced" in line and "from ended" in line
    ]
    assert "from ended to ordered" in forced["detail"] and "ended by mistake" in forced["detail"]
    # the routine again from its beginning: leaving testing asks its evidence anew
    assert invoke(nav, *base, "--state", "testing")[0] == 0
    code, output = invoke(nav, *base, "--state", "verified-inactive")
    assert code == 1 and "test-not-verified:" in output


def test_a_renewed_cpa_says_which_settings_made_by_hand_it_replaces(
    nav: Path, reference_dir: Path, tmp_path: Path
) -> None:
    """``partners set --cpa`` takes the renewed CPA's terms as they are; a setting made by hand
    before (any message type, a channel for every binding) is dropped, and said so."""
    base = ("partners", "set", NAV, "--our", OURS)
    assert invoke(nav, *base, "--any-message-type")[0] == 0
    assert invoke(nav, *base, "--endpoint", "https://nav.example.no/ebms")[0] == 0
    renewed = nav_cpa(reference_dir, tmp_path, "nav:qass:99999", datetime.now(UTC) + timedelta(400))
    code, output = invoke(nav, *base, "--cpa", str(renewed))
    assert code == 0, output
    assert "any message type: no longer (the new terms' bindings decide)" in output
    assert "endpoint: https://nav.example.no/ebms -> " in output
    assert "binding channels: each binding's own again" in output
    shown = json.loads(invoke(nav, "partners", "show", NAV, "--our", OURS, "--json")[1])
    assert shown["any_message_type"] is False
