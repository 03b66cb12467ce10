"""An EnvelopedData with more recipients than any real payload has is refused unread: each
recipient naming our certificate (issuer and serial are public) would cost a look-up, and
once a signature verified, an attempt with our RSA key."""

from __future__ import annotations

import io

import pytest
from asn1crypto import cms as acms

from meldingstjener.security import cms
from meldingstjener.security import cms_enveloped as enveloped
from meldingstjener.security.devpki import DevParty, DevPki

RECEIVER = "79768"  # a HER-id the session PKI in conftest.py issues for
LIMIT = 16  # cms_LIMIT


@pytest.fixture(scope="module")
def receiver(pki: DevPki) -> DevParty:
    return pki.parties[RECEIVER]


def with_recipients(der: bytes, count: int) -> bytes:
    """``der`` with its one recipient repeated ``count`` times (every copy naming the receiver
    and holding the right wrapped key)."""
    info = acms.ContentInfo.load(der)
    content = info["content"]
    [recipient] = list(content["recipient_infos"])
    content["recipient_infos"] = acms.RecipientInfos([recipient.copy() for _ in range(count)])
    return bytes(acms.ContentInfo({"content_type": "enveloped_data", "content": content}).dump())


def test_more_recipients_than_the_limit_are_refused_as_not_cms(receiver: DevParty) -> None:
    certificate = receiver.encryption.certificate
    candidates = [(receiver.encryption.key, certificate)]
    der = cms.encrypt(b"<MsgHead/>", certificate)
    at_limit = with_recipients(der, LIMIT)
    assert cms.decrypt(at_limit, candidates) == b"<MsgHead/>"
    assert len(enveloped.wrapped_keys(lambda: io.BytesIO(at_limit), candidates)) == 1

    over = with_recipients(der, LIMIT + 1)
    with pytest.raises(cms.CmsError, match="more than 16 recipients") as caught:
        cms.decrypt(over, candidates)
    assert caught.value.code == "not-cms"
    with pytest.raises(cms.CmsError, match="more than 16 recipients") as caught:
        enveloped.wrapped_keys(lambda: io.BytesIO(over), candidates)
    assert caught.value.code == "not-cms"
