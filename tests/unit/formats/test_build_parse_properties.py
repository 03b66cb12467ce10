"""Property-based: whatever we build, we read back as the same values (and it stays XSD-valid)."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meldingstjener.formats import (
    AppRec,
    AppRecError,
    AppRecParty,
    AppRecStatus,
    AppRecUnit,
    Attachment,
    Coded,
    Dialogmelding,
    Foresporsel,
    Notat,
    OriginalMsgId,
    Party,
    build_dialogmelding,
    read_apprec,
    read_dialog,
    serialize_apprec,
    validate,
)

# XML 1.0 cannot carry most control characters; KITH texts are trimmed on read.
xml_text = (
    st.text(
        alphabet=st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp")),
        min_size=1,
        max_size=40,
    )
    .map(str.strip)
    .filter(bool)
)
her_ids = st.integers(min_value=1, max_value=999_999_999)
codes = st.from_regex(r"[A-Z0-9_]{1,12}", fullmatch=True)
dates = st.datetimes().map(lambda d: d.replace(microsecond=0).isoformat())

units = st.builds(
    AppRecUnit, name=xml_text, id=her_ids.map(str), type_id=st.just(Coded(v="HER", dn="HER-id"))
)
apprec_parties = st.builds(
    AppRecParty,
    inst=units,
    depts=st.lists(units, max_size=2).map(tuple),
    persons=st.lists(units, max_size=2).map(tuple),
)
apprecs = st.builds(
    AppRec,
    version=st.sampled_from(["1.0", "1.1"]),
    id=xml_text,
    gen_date=dates,
    sender=apprec_parties,
    receiver=apprec_parties,
    status=st.sampled_from(list(AppRecStatus)),
    errors=st.lists(
        st.builds(AppRecError, code=codes, text=xml_text, ot=st.none() | xml_text), max_size=3
    ).map(tuple),
    original_msg_id=st.builds(
        OriginalMsgId, msg_type=st.builds(Coded, v=codes), issue_date=dates, id=xml_text
    ),
)


@settings(max_examples=60, deadline=None)
@given(apprecs)
def test_apprec_build_then_read_gives_the_same_values(apprec: AppRec) -> None:
    read = read_apprec(serialize_apprec(apprec))
    expected_mig = {"1.0": "1.0 2004-11-21", "1.1": "v1.1 2012-02-15"}[apprec.version]
    assert read == AppRec(**{**_fields(apprec), "mig_version": expected_mig})


def _fields(apprec: AppRec) -> dict[str, object]:
    return {name: getattr(apprec, name) for name in apprec.__dataclass_fields__}


parties = st.builds(
    lambda org, org_her, service, service_her: Party.of(
        org, org_her, service_name=service, service_her_id=service_her
    ),
    xml_text,
    her_ids,
    xml_text,
    her_ids,
)
notes = st.builds(
    Notat,
    tema_kodet=st.builds(Coded, v=codes, dn=xml_text),
    tema=st.none() | xml_text,
    tekst=st.none() | xml_text,
    dok_id=st.none() | xml_text,
)
questions = st.builds(Foresporsel, type=st.builds(Coded, v=codes), sporsmal=st.none() | xml_text)
dialogs = st.one_of(
    st.builds(
        lambda q: ("DIALOG_FORESPORSEL", Dialogmelding(version="1.0", foresporsler=(q,))),
        questions,
    ),
    st.builds(lambda n: ("DIALOG_HELSEFAGLIG", Dialogmelding(version="1.1", notater=(n,))), notes),
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    dialog=dialogs,
    sender=parties,
    receiver=parties,
    attachment=st.none() | st.binary(max_size=200),
)
def test_dialog_build_then_read_gives_the_same_values_and_is_xsd_valid(
    dialog: tuple[str, Dialogmelding],
    sender: Party,
    receiver: Party,
    attachment: bytes | None,
    kith_xsd: Path,
) -> None:
    message_type, content = dialog
    attachments = [Attachment(attachment, "application/pdf")] if attachment is not None else []
    data = build_dialogmelding(
        message_type=message_type,
        sender=sender,
        receiver=receiver,
        dialog=content,
        attachments=attachments,
    )
    message = read_dialog(data)
    assert message.dialog == content
    assert message.head.msg_info.sender == sender
    assert message.head.msg_info.receiver == receiver
    assert [a.content_base64 for a in message.head.attachments] == (
        [attachment] if attachment is not None else []
    )
    xsd = [p for p in validate(data, kith_xsd).problems if p.layer == "xsd"]
    assert xsd == []
