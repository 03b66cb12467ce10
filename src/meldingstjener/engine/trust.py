"""Is a partner's (or our own) certificate acceptable for this use, now?

With trust anchors configured (``security.trust_anchors``), the security layer's validator checks
validity, key usage, the chain and revocation (CRL/OCSP, with the soft/hard policy). Without any
anchors only validity and key usage can be checked, and the log says so once: such a server
trusts the certificates in its register as given.
"""

from __future__ import annotations

import logging
from datetime import datetime

from cryptography import x509

from meldingstjener.security.certs import Usage, usage_allowed
from meldingstjener.security.validation import CertificateValidator

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
