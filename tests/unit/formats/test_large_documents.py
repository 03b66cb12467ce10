"""Large fagmeldinger read from files: the same report as from bytes, without extra copies."""

from __future__ import annotations

import base64
import binascii
import os
import tracemalloc
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meldingstjener.formats import (
    Attachment,
    Coded,
    Dialogmelding,
    Notat,
    Party,
    build_dialogmelding,
    validate,
    xmlparse,
    xmlutil,
)
from meldingstjener.formats.msghead import msghead_from_element
from meldingstjener.formats.xmlparse import XmlRefused, parse_xml, parse_xml_file

MiB = 1024 * 1024


def _document(attachment: bytes) -> bytes:
    return build_dialogmelding(
        message_type="DIALOG_NOTAT",
        sender=Party.of("Legekontoret", 56704, service_name="Fastlegene", service_her_id=90998),
        receiver=Party.of("Sykehuset", 59, service_name="Ortopedisk kirurgi", service_her_id=90999),
        dialog=Dialogmelding(
            version="1.0", notater=(Notat(tema_kodet=Coded(v="1", dn="Helse"), tekst="Skann"),)
        ),
        attachments=(Attachment(data=attachment, mime_type="application/pdf"),),
    )


PIECES = st.lists(st.text(alphabet="AQg/+= \n\té*", max_size=9), max_size=4)


@settings(max_examples=400, deadline=None)
@given(pieces=PIECES)
def test_base64_text_checked_in_slices_agrees_with_b64decode(pieces: list[str]) -> None:
    try:
        base64.b64decode("".join("".join(pieces).split()), validate=True)
        expected = True
    except (binascii.Error, ValueError):
        expected = False
    with mock.patch.object(xmlutil, "_TEXT_SLICE", 3):
        assert xmlutil.is_base64_text(pieces) is expected


def _variants(tmp_path: Path) -> list[bytes]:
    good = _document(os.urandom(300_000))
    text_start = good.index(b"<Base64Container") + good[good.index(b"<Base64Container") :].index(
        b">"
    )
    broken = good[: text_start + 50] + b"*" + good[text_start + 51 :]
    wrapped = good.replace(b"/", b"/\n", 50)  # line breaks inside the base64 text are fine
    commented = good[: text_start + 1] + b"<!-- a note -->" + good[text_start + 1 :]
    return [good, broken, wrapped, commented, good.replace(b'V="A"', b'V="XML"', 1), b"<a>", b""]


def test_a_file_gets_the_report_its_bytes_get(tmp_path: Path) -> None:
    for number, data in enumerate(_variants(tmp_path)):
        path = tmp_path / f"doc{number}.xml"
        path.write_bytes(data)
        from_file, from_bytes = validate(path), validate(data)
        assert from_file.as_dict() == from_bytes.as_dict(), number
        assert (from_file.msghead is None) == (from_bytes.msghead is None)


def test_samples_read_the_same_from_files(samples: Path, kith_xsd: Path) -> None:
    for sample in sorted(samples.glob("*.xml"))[:40]:
        assert (
            validate(sample, kith_xsd).as_dict()
            == validate(sample.read_bytes(), kith_xsd).as_dict()
        )


def test_the_validator_keeps_no_decoded_attachment_but_checks_it() -> None:
    data = _document(b"%PDF-1.4 scan")
    report = validate(data)
    assert report.valid and report.msghead is not None
    assert [a.content_base64 for a in report.msghead.attachments] == [None]
    full = msghead_from_element(parse_xml(data))
    assert [a.content_base64 for a in full.attachments] == [b"%PDF-1.4 scan"]


def test_a_large_attachment_costs_one_copy_of_its_text_at_most(tmp_path: Path) -> None:
    data = _document(os.urandom(12 * MiB))
    path = tmp_path / "large.xml"
    path.write_bytes(data)
    del data
    tracemalloc.start()
    try:
        report = validate(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.valid, report.problems
    size = path.stat().st_size
    # the tree is libxml2's (not traced); Python holds the attachment text once, briefly
    assert peak < 1.2 * size, f"{peak} bytes at the peak for a document of {size}"


def test_a_file_that_grows_past_the_limit_while_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "growing.xml"
    path.write_bytes(b"<a>" + b"x" * 5000 + b"</a>")
    real_stat = os.stat

    def stale_stat(target: object) -> os.stat_result:
        result = real_stat(target)  # type: ignore[arg-type]
        return os.stat_result((*result[:6], 10, *result[7:]))  # as it was when it was small

    with mock.patch.object(xmlparse.os, "stat", stale_stat), pytest.raises(XmlRefused):
        parse_xml_file(path, max_bytes=1000)
    assert parse_xml_file(path).tag == "a"
