"""CMS EnvelopedData: encrypt to a partner's certificate and decrypt what partners send.

We send AES-256-CBC with RSA PKCS#1 v1.5 key transport, recipient identified by
IssuerAndSerialNumber (what every Norwegian MSH can read). We receive AES-128/192/256-CBC and
3DES-CBC, with the content key wrapped by RSA PKCS#1 v1.5 or RSA-OAEP. Single DES is never
accepted; 3DES only while the policy allows it (large senders still use it).

The structure is read and written with asn1crypto and the primitives come from cryptography,
because cryptography's own CMS decryptor supports neither 3DES nor OAEP.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from asn1crypto import algos
from asn1crypto import cms as acms
from cryptography import x509
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, CipherAlgorithm, algorithms, modes

from meldingstjener.security.certs import describe
from meldingstjener.security.cms_common import (
    DEFAULT_MAX_PLAINTEXT,
    CmsError,
    gunzip_if_gzip,
    gzip_bytes,
    hash_by_name,
    identifies,
    issuer_and_serial,
    load_content_info,
)

DecryptionCandidate = tuple[rsa.RSAPrivateKey, x509.Certificate]

# content-encryption algorithm -> (key length in bytes, block size in bits)
_CIPHERS: dict[str, tuple[int, int]] = {
    "aes128_cbc": (16, 128),
    "aes192_cbc": (24, 128),
    "aes256_cbc": (32, 128),
    "tripledes_3key": (24, 64),
}
_WEAK = {"tripledes_3key", "des"}


def encrypt(data: bytes, recipient: x509.Certificate, *, compress: bool = False) -> bytes:
    """DER EnvelopedData of ``data`` (gzipped first when ``compress``) for ``recipient``."""
    public_key = recipient.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise CmsError(
            f"the recipient certificate {describe(recipient)} has no RSA key",
            code="unsupported-algorithm",
        )
    plaintext = gzip_bytes(data) if compress else data
    content_key, iv = os.urandom(32), os.urandom(16)
    padder = sym_padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(content_key), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    recipient_info = acms.KeyTransRecipientInfo(
        {
            "version": "v0",
            "rid": acms.RecipientIdentifier(
                {"issuer_and_serial_number": issuer_and_serial(recipient)}
            ),
            "key_encryption_algorithm": {"algorithm": "rsaes_pkcs1v15"},
            "encrypted_key": public_key.encrypt(content_key, padding.PKCS1v15()),
        }
    )
    enveloped = acms.EnvelopedData(
        {
            "version": "v0",
            "recipient_infos": [acms.RecipientInfo({"ktri": recipient_info})],
            "encrypted_content_info": {
                "content_type": "data",
                "content_encryption_algorithm": {"algorithm": "aes256_cbc", "parameters": iv},
                "encrypted_content": ciphertext,
            },
        }
    )
    return acms.ContentInfo({"content_type": "enveloped_data", "content": enveloped}).dump()


def decrypt(
    der: bytes,
    candidates: Sequence[DecryptionCandidate],
    *,
    allow_3des: bool = True,
    gunzip: bool = True,
    max_size: int = DEFAULT_MAX_PLAINTEXT,
) -> bytes:
    """Plaintext of an EnvelopedData for one of our ``candidates`` (key, certificate) pairs.

    The recipient is chosen by IssuerAndSerialNumber (or subject key identifier). A gzipped
    plaintext is gunzipped unless ``gunzip`` is False.
    """
    enveloped = load_content_info(der, "enveloped_data")["content"]
    content_info = enveloped["encrypted_content_info"]
    algorithm = content_info["content_encryption_algorithm"]
    name = algorithm["algorithm"].native
    _check_content_algorithm(name, allow_3des)
    key_length, block_bits = _CIPHERS[name]
    ciphertext = content_info["encrypted_content"].native
    if ciphertext is None:
        raise CmsError("the EnvelopedData carries no encrypted content", code="detached-content")

    matched = False
    for recipient_info in enveloped["recipient_infos"]:
        if recipient_info.name != "ktri":
            continue
        ktri = recipient_info.chosen
        for key, cert in candidates:
            if not identifies(ktri["rid"], cert):
                continue
            matched = True
            content_key = _unwrap_key(ktri, key, key_length)
            plaintext = _decrypt_content(name, content_key, algorithm, ciphertext, block_bits)
            if plaintext is not None:
                return gunzip_if_gzip(plaintext, max_size=max_size) if gunzip else plaintext
    if not matched:
        raise CmsError(
            "the message is not encrypted to any of our encryption certificates "
            f"({', '.join(describe(cert) for _, cert in candidates) or 'none configured'})",
            code="recipient-not-found",
        )
    # One message for every failure after the recipient matched: telling a wrong key apart
    # from bad padding would give an attacker a decryption oracle.
    raise CmsError("the message could not be decrypted with our key", code="decryption-failed")


def _check_content_algorithm(name: str, allow_3des: bool) -> None:
    if name in _WEAK and (name == "des" or not allow_3des):
        raise CmsError(
            f"the message is encrypted with {name}, which the security policy refuses",
            code="weak-algorithm-refused",
        )
    if name not in _CIPHERS:
        raise CmsError(
            f"content encryption {name} is not supported (AES-CBC or 3DES-CBC expected)",
            code="unsupported-algorithm",
        )


def _unwrap_key(ktri: acms.KeyTransRecipientInfo, key: rsa.RSAPrivateKey, key_length: int) -> bytes:
    algorithm = ktri["key_encryption_algorithm"]
    name = algorithm["algorithm"].native
    encrypted_key = ktri["encrypted_key"].native
    if name == "rsaes_pkcs1v15":
        try:
            content_key = key.decrypt(encrypted_key, padding.PKCS1v15())
        except ValueError:
            content_key = b""
        # Bleichenbacher: on bad padding continue with a random key, so the failure shows up
        # only later, indistinguishable from a wrong key.
        return content_key if len(content_key) == key_length else os.urandom(key_length)
    if name == "rsaes_oaep":
        try:
            content_key = key.decrypt(encrypted_key, _oaep_padding(algorithm["parameters"]))
        except ValueError:
            content_key = b""
        return content_key if len(content_key) == key_length else os.urandom(key_length)
    raise CmsError(f"key transport {name} is not supported", code="unsupported-algorithm")


def _oaep_padding(params: algos.RSAESOAEPParams | None) -> padding.OAEP:
    if params is None or params.native is None:
        return padding.OAEP(padding.MGF1(hash_by_name("sha1")), hash_by_name("sha1"), None)
    digest = hash_by_name(params["hash_algorithm"]["algorithm"].native)
    mgf = params["mask_gen_algorithm"]
    if mgf["algorithm"].native != "mgf1":
        raise CmsError("OAEP with a mask generator other than MGF1", code="unsupported-algorithm")
    mgf_hash = hash_by_name(mgf["parameters"]["algorithm"].native)
    label = params["p_source_algorithm"]["parameters"].native or None
    return padding.OAEP(padding.MGF1(mgf_hash), digest, label)


def _decrypt_content(
    name: str,
    content_key: bytes,
    algorithm: algos.EncryptionAlgorithm,
    ciphertext: bytes,
    block_bits: int,
) -> bytes | None:
    iv = algorithm["parameters"].native
    if not isinstance(iv, bytes) or len(iv) * 8 != block_bits:
        raise CmsError("the encryption parameters carry no valid IV", code="not-cms")
    cipher: CipherAlgorithm = (
        TripleDES(content_key) if name == "tripledes_3key" else algorithms.AES(content_key)
    )
    if len(ciphertext) % (block_bits // 8):
        return None
    decryptor = Cipher(cipher, modes.CBC(iv)).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    unpadder = sym_padding.PKCS7(block_bits).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        return None
