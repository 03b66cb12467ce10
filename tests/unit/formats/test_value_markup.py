"""A value element (an id, a HER-id, a version) that holds a comment, a processing instruction or
an element besides its text is refused, never read as the text before the markup: a HER-id
``1123<!---->74`` is 1123 to ``element.text`` and 112374 to XPath, XSD and the receiver's EPJ."""

from __future__ import annotations

from pathlib import Path

import pytest

from meldingstjener.formats import MarkupInValue, read_apprec, read_msghead, validate

FORESPORSEL = "dialogmelding__1.0__foresporsel-og-svar__dialog-foresporsel-samsvar-test.xml"
SENDER_ID = b"<Id>112374</Id>"  # the sender organisation's HER-id, its first Ident
SENDER_ID_PATH = "/MsgHead/MsgInfo/Sender/Organisation/Ident/Id"


@pytest.fixture
def sample(samples: Path) -> bytes:
    data = (samples / FORESPORSEL).read_bytes()
    assert data.count(SENDER_ID) == 1
    return data


@pytest.mark.parametrize(
    "markup", [b"<!---->", b"<?x?>", b"<b/>"], ids=["comment", "pi", "element"]
)
def test_a_her_id_split_by_markup_is_refused_by_the_reader(sample: bytes, markup: bytes) -> None:
    data = sample.replace(SENDER_ID, b"<Id>1123" + markup + b"74</Id>")
    with pytest.raises(MarkupInValue) as caught:
        read_msghead(data)
    assert caught.value.code == "markup-in-value" and caught.value.apprec_code == "T02"
    assert caught.value.path == SENDER_ID_PATH


@pytest.mark.parametrize("with_xsd", [False, True], ids=["no-xsd", "kith-xsd"])
def test_a_her_id_split_by_a_comment_is_a_problem_and_names_no_sender(
    sample: bytes, kith_xsd: Path, with_xsd: bool
) -> None:
    # The XSD sees 112374 and is content: the structure layer must say it, either way.
    report = validate(
        sample.replace(SENDER_ID, b"<Id>1123<!---->74</Id>"), kith_xsd if with_xsd else None
    )
    assert not report.valid
    assert ("structure", "markup-in-value", SENDER_ID_PATH) in {
        (p.layer, p.code, p.path) for p in report.problems
    }
    # neither reading of the HER-id is the sender's: the envelope check cannot match it
    assert report.sender.organisation is None and report.sender.service is None


def test_cdata_is_text_and_passes(sample: bytes) -> None:
    data = sample.replace(SENDER_ID, b"<Id><![CDATA[1123]]>74</Id>")
    assert read_msghead(data).sender_her_ids.organisation == "112374"
    assert validate(data).valid


def test_markup_in_mig_version_is_reported_once_without_raising(sample: bytes) -> None:
    data = sample.replace(
        b"<MIGversion>v1.2 2006-05-24</MIGversion>",
        b"<MIGversion>v1.2<!----> 2006-05-24</MIGversion>",
    )
    report = validate(data)
    assert report.version is None
    found = [(p.code, p.path) for p in report.problems]
    assert found.count(("markup-in-value", "/MsgHead/MsgInfo/MIGversion")) == 1
    assert ("unsupported-version", "/MsgHead/MsgInfo/MIGversion") not in found


def test_markup_in_an_apprec_id_is_refused(samples: Path) -> None:
    data = (samples / "app-rec__1.1__example-avvist.xml").read_bytes()
    original = data[data.index(b"<OriginalMsgId>") :]
    start = original.index(b"<Id>") + len(b"<Id>")
    changed = original[:start] + b"<!--x-->" + original[start:]
    data = data.replace(original, changed)
    with pytest.raises(MarkupInValue):
        read_apprec(data)
    report = validate(data)
    assert ("markup-in-value", "/AppRec/OriginalMsgId/Id") in {
        (p.code, p.path) for p in report.problems
    }
