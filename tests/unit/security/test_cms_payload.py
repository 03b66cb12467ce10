"""CMS EnvelopedData and SignedData between our own encrypt/decrypt/sign/verify.

Interoperability with openssl is proven in tests/integration/security.
"""

from __future__ import annotations

import base64
import gzip

import pytest
from asn1crypto import algos
from asn1crypto import cms as acms
from asn1crypto import x509 as ax509
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from meldingstjener.security import cms
from meldingstjener.security import cms_enveloped as enveloped
from meldingstjener.security.devpki import DevParty, DevPki

SENDER = "8141253"  # HER-ids the session PKI in conftest.py issues for
RECEIVER = "79768"


def _candidates(party: DevParty) -> list[cms.DecryptionCandidate]:
    return [(party.encryption.key, party.encryption.certificate)]


@pytest.fixture(scope="module")
def sender(pki: DevPki) -> DevParty:
    return pki.parties[SENDER]


@pytest.fixture(scope="module")
def receiver(pki: DevPki) -> DevParty:
    return pki.parties[RECEIVER]


@settings(max_examples=15, deadline=None)
@given(st.binary(max_size=3000))
def test_encrypt_then_decrypt_gives_back_the_bytes(receiver: DevParty, data: bytes) -> None:
    party = receiver
    if data.startswith(b"\x1f\x8b"):
        data = b"x" + data  # a plaintext that happens to look gzipped is gunzipped by design
    assert cms.decrypt(cms.encrypt(data, party.encryption.certificate), _candidates(party)) == data


def test_envelope_uses_aes256_pkcs1_and_issuer_serial(receiver: DevParty) -> None:
    der = cms.encrypt(b"<MsgHead/>", receiver.encryption.certificate)
    enveloped = acms.ContentInfo.load(der)["content"]
    content = enveloped["encrypted_content_info"]
    assert content["content_encryption_algorithm"]["algorithm"].native == "aes256_cbc"
    ktri = enveloped["recipient_infos"][0].chosen
    assert ktri["key_encryption_algorithm"]["algorithm"].native == "rsaes_pkcs1v15"
    assert ktri["rid"].name == "issuer_and_serial_number"
    assert (
        ktri["rid"].chosen["serial_number"].native == receiver.encryption.certificate.serial_number
    )


def test_compressed_payload_is_gunzipped_on_receipt(receiver: DevParty) -> None:
    payload = b"<MsgHead>" + b"a" * 5000 + b"</MsgHead>"
    der = cms.encrypt(payload, receiver.encryption.certificate, compress=True)
    assert len(der) < 1000
    assert cms.decrypt(der, _candidates(receiver)) == payload
    raw = cms.decrypt(der, _candidates(receiver), gunzip=False)
    assert gzip.decompress(raw) == payload


def test_gzip_bomb_is_refused(receiver: DevParty) -> None:
    der = cms.encrypt(b"\0" * 2_000_000, receiver.encryption.certificate, compress=True)
    with pytest.raises(cms.CmsError) as caught:
        cms.decrypt(der, _candidates(receiver), max_size=1_000_000)
    assert caught.value.code == "too-large"


def test_previous_key_decrypts_during_rollover(sender: DevParty, receiver: DevParty) -> None:
    der = cms.encrypt(b"old", receiver.encryption.certificate)
    candidates = _candidates(sender) + _candidates(receiver)  # current first, previous second
    assert cms.decrypt(der, candidates) == b"old"


def test_message_for_someone_else(sender: DevParty, receiver: DevParty) -> None:
    der = cms.encrypt(b"x", receiver.encryption.certificate)
    with pytest.raises(cms.CmsError) as caught:
        cms.decrypt(der, _candidates(sender))
    assert caught.value.code == "recipient-not-found"


def test_wrong_key_for_the_named_certificate_fails_uniformly(
    sender: DevParty, receiver: DevParty
) -> None:
    # A wrong key unwraps a random content key (never an error: Bleichenbacher), and only the
    # CBC padding then tells; its garbage passes that about once in 256 encryptions, so the
    # refusal is looked for in up to five (all five passing: 1 in 10^12).
    wrong = [(sender.encryption.key, receiver.encryption.certificate)]
    codes = []
    for _ in range(5):
        der = cms.encrypt(b"secret", receiver.encryption.certificate)
        try:
            garbage = cms.decrypt(der, wrong)
        except cms.CmsError as caught:
            codes.append(caught.code)
            break
        assert garbage != b"secret"
    assert codes == ["decryption-failed"]


def test_altered_ciphertext_never_yields_the_original(receiver: DevParty) -> None:
    # AES-CBC has no integrity of its own: a changed last byte usually breaks the padding
    # (decryption-failed), but about 1 time in 256 the padding stays valid and the last block
    # decrypts to other bytes. Integrity is the envelope signature's job (its cid: reference
    # covers these bytes; see the XMLDSig tests and the engine's tampered-payload tests).
    original = b"secret" * 10
    for flip in (0x01, 0x02, 0x80):
        der = bytearray(cms.encrypt(original, receiver.encryption.certificate))
        der[-1] ^= flip
        try:
            plain = cms.decrypt(bytes(der), _candidates(receiver))
        except cms.CmsError as caught:
            assert caught.code == "decryption-failed"
        else:
            assert plain != original


@pytest.mark.parametrize("data", [b"", b"hello", b"\x02\x01\x00", b"-----BEGIN PKCS7-----\n!!\n"])
def test_not_cms(data: bytes, receiver: DevParty) -> None:
    with pytest.raises(cms.CmsError) as caught:
        cms.decrypt(cms.cms_der_from_any(data) if data[:1] == b"\x30" else data, [])
    assert caught.value.code == "not-cms"


def test_input_forms_der_pem_base64(receiver: DevParty) -> None:
    der = cms.encrypt(b"x", receiver.encryption.certificate)
    b64 = base64.encodebytes(der)
    pem = b"-----BEGIN CMS-----\n" + b64 + b"-----END CMS-----\n"
    assert cms.cms_der_from_any(der) == der
    assert cms.cms_der_from_any(b64) == der
    assert cms.cms_der_from_any(pem) == der
    with pytest.raises(cms.CmsError):
        cms.cms_der_from_any(b"not base64 at all!")


def test_signed_data_round_trip(sender: DevParty) -> None:
    der = cms.sign(b"<MsgHead/>", sender.signing.key, sender.signing.certificate)
    verified = cms.verify(der, expected_signer=sender.signing.certificate)
    assert verified.content == b"<MsgHead/>"
    assert verified.signer == sender.signing.certificate
    assert verified.signing_time is not None


def test_signer_must_be_the_expected_certificate(sender: DevParty, receiver: DevParty) -> None:
    der = cms.sign(b"x", sender.signing.key, sender.signing.certificate)
    with pytest.raises(cms.CmsError) as caught:
        cms.verify(der, expected_signer=receiver.signing.certificate)
    assert caught.value.code == "signer-mismatch"


def test_altered_signed_content_is_detected(sender: DevParty) -> None:
    der = cms.sign(b"original content", sender.signing.key, sender.signing.certificate)
    tampered = der.replace(b"original content", b"0riginal content")
    with pytest.raises(cms.CmsError) as caught:
        cms.verify(tampered, expected_signer=sender.signing.certificate)
    assert caught.value.code == "digest-mismatch"


def test_forged_signature_is_detected(sender: DevParty, receiver: DevParty) -> None:
    # Signed with another key but claiming the sender's certificate.
    der = cms.sign(b"x", receiver.signing.key, sender.signing.certificate)
    with pytest.raises(cms.CmsError) as caught:
        cms.verify(der, expected_signer=sender.signing.certificate)
    assert caught.value.code == "signature-invalid"


def test_sign_and_encrypt_then_decrypt_and_verify(sender: DevParty, receiver: DevParty) -> None:
    der = cms.sign_and_encrypt(
        b"<Dialogmelding/>",
        sender.signing.key,
        sender.signing.certificate,
        receiver.encryption.certificate,
        compress=True,
    )
    verified = cms.decrypt_and_verify(
        der, _candidates(receiver), expected_signer=sender.signing.certificate
    )
    assert verified.content == b"<Dialogmelding/>"
    with pytest.raises(cms.CmsError) as caught:
        cms.decrypt_and_verify(
            der, _candidates(receiver), expected_signer=receiver.signing.certificate
        )
    assert caught.value.code == "signer-mismatch"


def test_enveloped_data_given_to_verify(receiver: DevParty) -> None:
    der = cms.encrypt(b"x", receiver.encryption.certificate)
    with pytest.raises(cms.CmsError) as caught:
        cms.verify(der, expected_signer=None)
    assert caught.value.code == "unexpected-content-type"


@pytest.mark.parametrize("last", [b"\x0b", b" ", b"\n", b"\t"])
def test_der_ending_in_a_whitespace_byte_is_kept_whole(last: bytes) -> None:
    # A DER value whose final content byte happens to be a whitespace value (1 in ~40 random
    # ciphertexts) must not be trimmed.
    der = b"\x30\x03\x04\x01" + last
    assert cms.cms_der_from_any(der) == der


def _asn1crypto_recipient_infos(recipient: x509.Certificate, encrypted_key: bytes) -> bytes:
    parsed = ax509.Certificate.load(recipient.public_bytes(serialization.Encoding.DER))
    return acms.RecipientInfos(
        [
            acms.RecipientInfo(
                {
                    "ktri": acms.KeyTransRecipientInfo(
                        {
                            "version": "v0",
                            "rid": acms.RecipientIdentifier(
                                {
                                    "issuer_and_serial_number": acms.IssuerAndSerialNumber(
                                        {
                                            "issuer": parsed.issuer,
                                            "serial_number": parsed.serial_number,
                                        }
                                    )
                                }
                            ),
                            "key_encryption_algorithm": {"algorithm": "rsaes_pkcs1v15"},
                            "encrypted_key": encrypted_key,
                        }
                    )
                }
            )
        ]
    ).dump()


@settings(max_examples=30, deadline=None)
@given(
    st.binary(min_size=1, max_size=600),
    st.binary(min_size=16, max_size=16),
    st.integers(0, 70_000),  # one-, two- and three-octet lengths
)
def test_the_envelope_prefix_is_what_asn1crypto_writes(
    pki: DevPki, encrypted_key: bytes, iv: bytes, ciphertext_length: int
) -> None:
    """The RecipientInfos and the EnvelopedData head are written directly; asn1crypto is the
    reference for every byte (short and long lengths, every party's certificate)."""
    ciphertext = b"\0" * ciphertext_length
    for party in pki.parties.values():
        certificate = party.encryption.certificate
        ours = enveloped.recipient_infos(certificate, encrypted_key)
        assert ours == _asn1crypto_recipient_infos(certificate, encrypted_key)
        algorithm = algos.EncryptionAlgorithm({"algorithm": "aes256_cbc", "parameters": iv})
        content = acms.ContentInfo(
            {
                "content_type": "enveloped_data",
                "content": acms.EnvelopedData(
                    {
                        "version": "v0",
                        "recipient_infos": acms.RecipientInfos.load(ours),
                        "encrypted_content_info": {
                            "content_type": "data",
                            "content_encryption_algorithm": algorithm,
                            "encrypted_content": ciphertext,
                        },
                    }
                ),
            }
        )
        prefix = enveloped.enveloped_prefix(ours, iv, ciphertext_length)
        assert prefix + ciphertext == content.dump()


def _with_signer_info(der: bytes, change: str) -> bytes:
    """The SignedData ``der`` with one part of its SignerInfo made hostile (the signature is
    then not checked any more: what is refused is refused before)."""
    info = acms.ContentInfo.load(der)
    signer_info = info["content"]["signer_infos"][0]
    if change == "pss-mgf1-without-hash":
        signer_info["signature_algorithm"] = algos.SignedDigestAlgorithm(
            {
                "algorithm": "rsassa_pss",
                "parameters": algos.RSASSAPSSParams({"mask_gen_algorithm": {"algorithm": "mgf1"}}),
            }
        )
    else:
        attributes = [
            acms.CMSAttribute(
                {
                    "type": attr["type"],
                    "values": [] if attr["type"].native == change else attr["values"],
                }
            )
            for attr in signer_info["signed_attrs"]
        ]
        signer_info["signed_attrs"] = acms.CMSAttributes(attributes)
    return info.dump(force=True)


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ("message_digest", "signature-invalid"),
        ("content_type", "signature-invalid"),
        ("signing_time", "signature-invalid"),
        ("pss-mgf1-without-hash", "unsupported-algorithm"),
    ],
)
def test_hostile_signer_info_is_a_coded_cms_error(sender: DevParty, change: str, code: str) -> None:
    """An empty value set of a signed attribute, a PSS MGF1 naming no hash: CmsError with a
    code, not IndexError or TypeError from the depths."""
    der = cms.sign(b"<MsgHead/>", sender.signing.key, sender.signing.certificate)
    names = {
        attr["type"].native
        for attr in acms.ContentInfo.load(der)["content"]["signer_infos"][0]["signed_attrs"]
    }
    assert change in names or change.startswith("pss")
    with pytest.raises(cms.CmsError) as caught:
        cms.verify(_with_signer_info(der, change), expected_signer=sender.signing.certificate)
    assert caught.value.code == code
