"""AppRec 1.0 and 1.1: samples round-trip, bad ones are refused, build_apprec answers a MsgHead."""

from __future__ import annotations

from pathlib import Path

import pytest
from formats_sample_names import VALID_APPREC_SAMPLES

from meldingstjener.formats import (
    AppRecError,
    AppRecStatus,
    InvalidValue,
    UnknownAppRecStatus,
    UnsupportedVersion,
    build_apprec,
    read_apprec,
    read_msghead,
    serialize_apprec,
    validate,
)
from meldingstjener.model import HerId, PartyRef

FORESPORSEL = "dialogmelding__1.0__foresporsel-og-svar__dialog-foresporsel-samsvar-test.xml"


@pytest.mark.parametrize("name", VALID_APPREC_SAMPLES)
def test_apprec_round_trip_is_equal_and_xsd_valid(name: str, samples: Path, kith_xsd: Path) -> None:
    apprec = read_apprec((samples / name).read_bytes())
    built = serialize_apprec(apprec)
    assert read_apprec(built) == apprec
    report = validate(built, kith_xsd)
    assert [p for p in report.problems if p.layer in ("xsd", "structure")] == []


def test_all_data_sample(samples: Path) -> None:
    apprec = read_apprec((samples / "app-rec__1.1__all-data.xml").read_bytes())
    assert apprec.version == "1.1"
    assert apprec.status is AppRecStatus.OK
    assert apprec.status_text == "OK"
    assert apprec.sender.her_ids == PartyRef(HerId(8142987), HerId(8143060), HerId(123456))
    assert apprec.receiver.her_ids == PartyRef(HerId(998877), HerId(555111), HerId(9512))
    assert apprec.original_msg_id.id == "5d79bd68-a58c-4599-a4e7-9db28ea20099"
    assert apprec.original_msg_id.msg_type.v == "DIALOG_HELSEFAGLIG"


def test_rejected_sample_errors(samples: Path) -> None:
    apprec = read_apprec((samples / "app-rec__1.0__example-avvist.xml").read_bytes())
    assert apprec.status is AppRecStatus.REJECTED
    (error,) = apprec.errors
    assert (error.code, error.text, error.ot) == (
        "E21",
        "Mottaker finnes ikke",
        "Legen har sluttet",
    )
    assert error.code_list == "2.16.578.1.12.4.1.1.8221"


def test_errors_from_other_code_lists_are_read_as_sent(samples: Path) -> None:
    apprec = read_apprec((samples / "app-rec__1.0__example-ok-feil-i-delmelding.xml").read_bytes())
    assert apprec.status is AppRecStatus.OK_WITH_ERRORS
    assert [(e.code, e.code_list, e.ot) for e in apprec.errors] == [
        ("07", "2.16.578.1.12.4.1.1.8223", "93495"),
        ("16", "2.16.578.1.12.4.1.1.8223", "93498"),
    ]


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("app-rec__1.0__unknown-status.xml", UnknownAppRecStatus),
        ("app-rec__1.1__unknown-status.xml", UnknownAppRecStatus),
        ("app-rec__missing-migversion.xml", UnsupportedVersion),
        ("app-rec__unknown-migversion.xml", UnsupportedVersion),
    ],
)
def test_invalid_samples_give_the_right_error(
    name: str, error: type[Exception], samples: Path
) -> None:
    with pytest.raises(error) as caught:
        read_apprec((samples / name).read_bytes())
    assert "Status" in str(caught.value) or "MIGversion" in str(caught.value)


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_build_apprec_answers_the_original(version: str, samples: Path, kith_xsd: Path) -> None:
    original = read_msghead((samples / FORESPORSEL).read_bytes())
    data = build_apprec(
        original,
        status=AppRecStatus.REJECTED,
        errors=[AppRecError.of("E21", "Tjenesten er nedlagt")],
        version=version,
        msg_id="apprec-1",
        gen_date="2025-05-13T12:00:00",
    )
    apprec = read_apprec(data)
    assert apprec.version == version
    assert apprec.id == "apprec-1"
    assert apprec.sender.her_ids == original.receiver_her_ids
    assert apprec.receiver.her_ids == original.sender_her_ids
    assert apprec.original_msg_id.id == original.msg_id
    assert apprec.original_msg_id.issue_date == original.msg_info.gen_date
    assert apprec.original_msg_id.msg_type.v == "DIALOG_FORESPORSEL"
    assert [(e.code, e.text, e.ot) for e in apprec.errors] == [
        ("E21", "Mottaker finnes ikke", "Tjenesten er nedlagt")
    ]
    report = validate(data, kith_xsd)
    assert report.valid, report.problems


def test_rejection_without_error_is_refused(samples: Path) -> None:
    original = read_msghead((samples / FORESPORSEL).read_bytes())
    with pytest.raises(InvalidValue, match="needs an Error"):
        build_apprec(original, status=2)
    with pytest.raises(ValueError):
        build_apprec(original, status=7)
    with pytest.raises(InvalidValue, match="version"):
        build_apprec(original, status=1, version="2.0")


def test_a_copy_receiver_answers_as_itself(samples: Path) -> None:
    from meldingstjener.formats import copy_receiver

    other = b"""<OtherReceiver><RoleReceiver V="COP" DN="Kopimottaker"/><Organisation>
<OrganisationName>Kopilegen</OrganisationName><Ident><Id>555555</Id>
<TypeId V="HER" DN="HER-id" S="2.16.578.1.12.4.1.1.9051"/></Ident><Organisation>
<OrganisationName>Kopitjenesten</OrganisationName><Ident><Id>555556</Id>
<TypeId V="HER" DN="HER-id" S="2.16.578.1.12.4.1.1.9051"/></Ident></Organisation>
</Organisation></OtherReceiver>"""
    data = (samples / FORESPORSEL).read_bytes().replace(b"</Receiver>", b"</Receiver>" + other, 1)
    original = read_msghead(data)
    info = original.msg_info
    assert copy_receiver(info, "555555") == copy_receiver(info, "555556") is not None
    assert copy_receiver(info, str(original.receiver_her_ids.organisation)) is None
    as_copy = read_apprec(
        build_apprec(original, status=AppRecStatus.OK, answer_as=copy_receiver(info, "555556"))
    )
    assert as_copy.sender.her_ids == PartyRef(HerId(555555), HerId(555556))
    assert as_copy.receiver.her_ids == original.sender_her_ids
    # without it, the AppRec comes from the MsgHead's receiver, as before
    as_receiver = read_apprec(build_apprec(original, status=AppRecStatus.OK))
    assert as_receiver.sender.her_ids.organisation == original.receiver_her_ids.organisation


BAD_GEN_DATE = b"<GenDate>13.05.2025 11:51</GenDate>"


def _with_gen_date(samples: Path, gen_date: bytes) -> bytes:
    data = (samples / FORESPORSEL).read_bytes()
    assert data.count(b"<GenDate>2025-05-13T11:51:01</GenDate>") == 1
    return data.replace(b"<GenDate>2025-05-13T11:51:01</GenDate>", gen_date)


def test_a_rejection_for_a_bad_gen_date_is_itself_valid(samples: Path, kith_xsd: Path) -> None:
    # the GenDate was copied into OriginalMsgId/IssueDate, and our own validation (and the
    # receiver's) refused the AppRec that said so
    original = read_msghead(_with_gen_date(samples, BAD_GEN_DATE))
    built = build_apprec(
        original,
        status=AppRecStatus.REJECTED,
        errors=[AppRecError.of("T02", "/MsgHead/MsgInfo/GenDate: invalid-gen-date")],
        received_at="2025-05-13T11:52:07+00:00",
    )
    report = validate(built, kith_xsd)
    assert report.valid, report.problems
    apprec = read_apprec(built)
    assert apprec.original_msg_id.issue_date == "2025-05-13T11:52:07+00:00"
    [error] = apprec.errors
    assert error.ot is not None
    assert error.ot.startswith("/MsgHead/MsgInfo/GenDate: invalid-gen-date; GenDate ")
    assert "'13.05.2025 11:51'" in error.ot


@pytest.mark.parametrize(
    "gen_date",
    [b"Kari Nordmann 01017012345", b"2025" + b".05" * 40, b"01017012345"],
    ids=["words", "too-long", "eleven-digits"],
)
def test_a_bad_gen_date_that_is_no_date_is_not_quoted(samples: Path, gen_date: bytes) -> None:
    original = read_msghead(_with_gen_date(samples, b"<GenDate>" + gen_date + b"</GenDate>"))
    built = build_apprec(original, status=AppRecStatus.REJECTED, errors=[AppRecError.of("T02")])
    assert gen_date not in built and b"01017012345" not in built
    apprec = read_apprec(built)
    assert "GenDate '?' is not an xs:dateTime" in str(apprec.errors[0].ot)
    assert apprec.original_msg_id.issue_date == apprec.gen_date  # no receive time given
    assert validate(built).valid


@pytest.mark.parametrize(
    "gen_date", [b"2025-05-13", b"2025-05-13 11:51:01", b"2025-02-30T10:00:00"]
)
def test_what_python_reads_but_xsd_does_not_is_replaced_too(
    samples: Path, kith_xsd: Path, gen_date: bytes
) -> None:
    original = read_msghead(_with_gen_date(samples, b"<GenDate>" + gen_date + b"</GenDate>"))
    built = build_apprec(original, status=AppRecStatus.OK, received_at="2025-05-13T11:52:07+00:00")
    assert read_apprec(built).original_msg_id.issue_date == "2025-05-13T11:52:07+00:00"
    assert validate(built, kith_xsd).valid


def test_a_good_gen_date_is_the_issue_date(samples: Path) -> None:
    original = read_msghead((samples / FORESPORSEL).read_bytes())
    errors = [AppRecError.of("E35", "Pasienten finnes ikke")]
    apprec = read_apprec(
        build_apprec(original, status=2, errors=errors, received_at="2030-01-01T00:00:00Z")
    )
    assert apprec.original_msg_id.issue_date == original.msg_info.gen_date
    assert apprec.errors[0].ot == "Pasienten finnes ikke"
