"""The business-message commands as an operator uses them: validate, apprec build, dialog build."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from meldingstjener.cli import app
from meldingstjener.formats import read_apprec, read_dialog, read_msghead

FORESPORSEL = "dialogmelding__1.0__foresporsel-og-svar__dialog-foresporsel-samsvar-test.xml"
PATIENT_IDENTITY = ("15720255178", "LENESTOL", "BRUN")

runner = CliRunner()


@pytest.fixture(scope="module")
def samples(reference_dir: Path) -> Path:
    return reference_dir / "samples" / "fagmelding"


@pytest.fixture(scope="module")
def schemas(reference_dir: Path) -> Path:
    return reference_dir / "xsd" / "kith"


def test_validate_valid_files_exits_0_and_never_prints_the_patient(
    samples: Path, schemas: Path
) -> None:
    result = runner.invoke(
        app,
        [
            "validate",
            str(samples / FORESPORSEL),
            str(samples / "app-rec__1.1__example-ok.xml"),
            "--schemas",
            str(schemas),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "DIALOG_FORESPORSEL" in result.output
    assert "organisation=112374 service=8094866" in result.output
    assert "patient:  present" in result.output
    for secret in PATIENT_IDENTITY:
        assert secret not in result.output


def test_validate_json_has_one_object_per_file(samples: Path) -> None:
    files = [samples / FORESPORSEL, samples / "app-rec__1.0__unknown-status.xml"]
    result = runner.invoke(app, ["validate", "--json", *map(str, files)])
    assert result.exit_code == 1
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert [line["file"] for line in lines] == [str(f) for f in files]
    for line in lines:
        assert {"file", "valid", "type", "version", "sender", "receiver", "problems"} <= set(line)
    assert lines[0]["valid"] is True and lines[0]["patient_present"] is True
    assert lines[1]["valid"] is False
    assert lines[1]["problems"][0]["code"] == "unknown-status"
    assert lines[1]["problems"][0]["path"] == "/AppRec/Status"
    for secret in PATIENT_IDENTITY:
        assert secret not in result.output


def test_validate_unreadable_or_non_xml_exits_2(samples: Path, tmp_path: Path) -> None:
    not_xml = tmp_path / "note.txt"
    not_xml.write_text("this is not xml")
    result = runner.invoke(app, ["validate", str(samples / FORESPORSEL), str(not_xml)])
    assert result.exit_code == 2
    assert "xml-malformed" in result.output
    missing = runner.invoke(app, ["validate", str(tmp_path / "absent.xml")])
    assert missing.exit_code == 2
    huge = tmp_path / "huge.xml"
    with huge.open("wb") as handle:
        handle.truncate(200 * 1024 * 1024)
    refused = runner.invoke(app, ["validate", "--json", str(huge)])
    assert refused.exit_code == 2
    assert json.loads(refused.output)["problems"][0]["code"] == "xml-refused"


def test_apprec_build_answers_the_original(samples: Path, tmp_path: Path) -> None:
    out = tmp_path / "apprec.xml"
    result = runner.invoke(
        app,
        [
            "apprec",
            "build",
            "--original",
            str(samples / FORESPORSEL),
            "--status",
            "2",
            "--error",
            "E21:Tjenesten finnes ikke lenger",
            "--version",
            "1.0",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    apprec = read_apprec(out.read_bytes())
    assert apprec.version == "1.0"
    assert apprec.errors[0].code == "E21"
    assert apprec.original_msg_id.id == "6ddb98ed-9e34-4efa-9163-62e4ea0cbf43"
    bad = runner.invoke(
        app, ["apprec", "build", "--original", str(samples / FORESPORSEL), "--status", "2"]
    )
    assert bad.exit_code == 1
    assert "needs an Error" in bad.output


def test_dialog_build_foresporsel_then_svar(tmp_path: Path, schemas: Path) -> None:
    question = tmp_path / "q.xml"
    result = runner.invoke(
        app,
        [
            "dialog",
            "build",
            "--kind",
            "foresporsel",
            "--text",
            "Kan dere sende epikrisen?",
            "--from-org",
            "Legekontoret:56704",
            "--from-service",
            "Fastlegene:90990",
            "--to-org",
            "Sykehuset:59",
            "--to-service",
            "Medisinsk avdeling:90998",
            "--out",
            str(question),
        ],
    )
    assert result.exit_code == 0, result.output
    answer = tmp_path / "a.xml"
    result = runner.invoke(
        app,
        [
            "dialog",
            "build",
            "--kind",
            "svar",
            "--text",
            "Sendt i dag.",
            "--reference",
            str(question),
            "--out",
            str(answer),
        ],
    )
    assert result.exit_code == 0, result.output
    asked = read_msghead(question.read_bytes())
    answered = read_dialog(answer.read_bytes())
    assert answered.head.conversation_ref is not None
    assert answered.head.conversation_ref.ref_to_parent == asked.msg_id
    checked = runner.invoke(
        app, ["validate", "--schemas", str(schemas), str(question), str(answer)]
    )
    assert checked.exit_code == 0, checked.output


def test_dialog_build_rejects_a_bad_party() -> None:
    result = runner.invoke(
        app,
        [
            "dialog",
            "build",
            "--kind",
            "notat",
            "--text",
            "x",
            "--from-org",
            "nohere",
            "--to-org",
            "B:2",
        ],
    )
    assert result.exit_code == 2
    assert "NAME:HER-ID" in result.output


def test_validate_as_a_process(samples: Path) -> None:
    valid = subprocess.run(
        [sys.executable, "-m", "meldingstjener", "validate", str(samples / FORESPORSEL)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert valid.returncode == 0, valid.stderr
    invalid = subprocess.run(
        [
            sys.executable,
            "-m",
            "meldingstjener",
            "validate",
            "--json",
            str(samples / "dialogmelding__invalid-version.xml"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert invalid.returncode == 1
    assert json.loads(invalid.stdout)["version"] == "v1.1 2006-05-24"
