"""Is a partner's (or our own) certificate acceptable for this use, now? Which of a partner's
certificates does its signature verify with?

With trust anchors configured (``security.trust_anchors``), the security layer's validator checks
validity, key usage, the chain and revocation (CRL/OCSP, with the soft/hard policy). Without any
anchors only validity and key usage can be checked, and the log says so once: such a server
trusts the certificates in its register as given.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from lxml import etree

from meldingstjener.engine.context import EngineContext
from meldingstjener.engine.directory import SigningCertificates
from meldingstjener.security.certs import Usage, usage_allowed
from meldingstjener.security.validation import CertificateValidator
from meldingstjener.security.xmldsig import SignatureCheck, verify_ebxml_envelope

log = logging.getLogger(__name__)


def certificate_problem(
    validator: CertificateValidator | None,
    certificate: x509.Certificate,
    usage: Usage,
    now: datetime,
) -> str | None:
    """None when acceptable; else a plain sentence saying why not (no patient data involved)."""
    if validator is not None:
        check = validator.validate(certificate, usage=usage, at=now)
        return None if check.ok else check.summary()
    if certificate.not_valid_after_utc < now:
        return f"the certificate expired {certificate.not_valid_after_utc:%Y-%m-%d}"
    if certificate.not_valid_before_utc > now:
        return f"the certificate is not valid before {certificate.not_valid_before_utc:%Y-%m-%d}"
    if not usage_allowed(certificate, usage):
        return f"the certificate's key usage does not allow {usage}"
    return None


@dataclass(frozen=True)
class SenderSignature:
    """How a partner's signature on an envelope fared: the check, the certificate it verified
    with (None: none did), and why that certificate is not acceptable now (None: it is)."""

    check: SignatureCheck
    certificate: x509.Certificate | None
    problem: str | None = None

    @property
    def trusted(self) -> bool:
        return self.certificate is not None and self.problem is None


def verify_sender(
    ctx: EngineContext,
    envelope: etree._Element,
    attachments: Mapping[str, bytes],
    sender: str,
    certificates: SigningCertificates,
) -> SenderSignature:
    """The envelope's signature checked with the sender's registered signing certificate and,
    if that fails, with the one it replaced (for ``security.previous_signing_certificate_days``
    after the rollover); then the certificate that verified is checked for this use, now.

    When no certificate verified, the check is the one with the registered certificate (its
    problem is the one to report). The certificate in the signature's KeyInfo is never trusted
    by itself. Messages, their repeats and signals all come through here.
    """
    now = ctx.clock()
    candidates = certificates.candidates(now, ctx.policy.previous_signing_grace)
    if not candidates:
        return SenderSignature(
            SignatureCheck(False, problem="no registered signing certificate"), None
        )
    failed: list[SignatureCheck] = []
    for certificate in candidates:
        check = verify_ebxml_envelope(
            envelope, attachments, certificate=certificate, allow_sha1=ctx.policy.allow_sha1
        )
        if check.valid:
            if certificate is not certificates.current:
                # the operator sees which partner still signs with its old key
                log.info(
                    "a signature of %s verified with its previous signing certificate "
                    "(replaced %s)",
                    sender,
                    f"{certificates.replaced_at:%Y-%m-%d %H:%M}Z",
                )
            problem = certificate_problem(ctx.validator, certificate, "signing", now)
            return SenderSignature(check, certificate, problem)
        failed.append(check)
    return SenderSignature(failed[0], None)
