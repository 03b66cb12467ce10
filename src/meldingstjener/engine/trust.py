"""Is a partner's (or our own) certificate acceptable for this use, now? Which of a partner's
certificates does its signature verify with?

With trust anchors configured (``security.trust_anchors``), the security layer's validator checks
validity, key usage, the chain and revocation (CRL/OCSP, with the soft/hard policy). Without any
anchors only validity and key usage can be checked, and the log says so once: such a server
trusts the certificates in its register as given.

Whether a certificate is revoked may not be found out (its CA's CRL and OCSP addresses cannot be
reached, or answer nothing usable): a ``revocation-unknown`` alert per issuing CA says so, under
either policy (soft: the certificate is accepted unchecked; hard: it is refused for now, see
:class:`CertificateProblem`), told once while it lasts and resolved by the next answer about a
certificate of that CA. Each process remembers per store which CAs' alerts it knows resolved, so
a good answer costs no statement: one ``UPDATE`` per CA after a start, and one when an outage
ends.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from lxml import etree

from meldingstjener.engine.alerts import AlertKind, keep_alert
from meldingstjener.engine.context import EngineContext
from meldingstjener.engine.directory import SigningCertificates
from meldingstjener.security.certs import Usage, usage_allowed
from meldingstjener.security.revocation import FAILURE_MEMORY, RevocationStatus
from meldingstjener.security.validation import CertificateCheck, CertificateValidator
from meldingstjener.security.xmldsig import SignatureCheck, verify_ebxml_envelope
from meldingstjener.store.uow import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CertificateProblem:
    """Why a certificate is not acceptable now, in plain words (``str()`` of it; no patient
    data). ``revocation_unknown``: only because whether it is revoked could not be found out
    (``revocation_policy = "hard"``), a state of the CA's services or of our network that may
    pass: a message is held or its sender asked to send again, not given up or refused."""

    text: str
    revocation_unknown: bool = False

    def __str__(self) -> str:
        return self.text


def certificate_problem(
    validator: CertificateValidator | None,
    certificate: x509.Certificate,
    usage: Usage,
    now: datetime,
    *,
    store: Store | None = None,
) -> CertificateProblem | None:
    """None when acceptable; else why not. With ``store``, the revocation check's outcome is
    alerted there (``revocation-unknown``, see the module's text)."""
    if validator is not None:
        check = validator.validate(certificate, usage=usage, at=now)
        if store is not None:
            _report_revocation(store, validator, check, now)
        if check.ok:
            return None
        return CertificateProblem(check.summary(), check.revocation_unknown_only)
    if certificate.not_valid_after_utc < now:
        return CertificateProblem(
            f"the certificate expired {certificate.not_valid_after_utc:%Y-%m-%d}"
        )
    if certificate.not_valid_before_utc > now:
        return CertificateProblem(
            f"the certificate is not valid before {certificate.not_valid_before_utc:%Y-%m-%d}"
        )
    if not usage_allowed(certificate, usage):
        return CertificateProblem(f"the certificate's key usage does not allow {usage}")
    return None


# Per store: the issuing CAs whose revocation-unknown alert this process knows is not open
# ("settled") or has raised ("unknown"). Weak: a store's engine gone, its memory goes too.
_REVOCATION_STATES: weakref.WeakKeyDictionary[Store, dict[str, str]] = weakref.WeakKeyDictionary()
_REVOCATION_LOCK = threading.Lock()
# issuing CAs remembered per store: many more than any deployment trusts
_REVOCATION_REMEMBERED = 1000


def revocation_alert_key(issuer: x509.Certificate) -> str:
    """The ``revocation-unknown`` alert's key (after the kind) for certificates of ``issuer``:
    a digest of its name, which may be longer than the key has room for."""
    name = issuer.subject.public_bytes()
    return f"issuer:{hashlib.sha256(name).hexdigest()[:32]}"


def _report_revocation(
    store: Store, validator: CertificateValidator, check: CertificateCheck, now: datetime
) -> None:
    """Raise (kept: told once while it lasts, counted at each check) or resolve the
    ``revocation-unknown`` alert of each issuing CA the check asked about."""
    with _REVOCATION_LOCK:
        states = _REVOCATION_STATES.setdefault(store, {})
    for finding in check.revocation:
        key = revocation_alert_key(finding.issuer)
        if finding.status is RevocationStatus.UNKNOWN:
            if states.get(key) != "unknown":
                log.warning(
                    "whether certificates issued by %s are revoked could not be found out: %s",
                    finding.issuer.subject.rfc4514_string(),
                    finding.detail,
                )
            with store.unit_of_work() as uow:
                keep_alert(
                    uow,
                    AlertKind.REVOCATION_UNKNOWN,
                    _revocation_summary(finding.issuer, finding.detail, validator),
                    at=now,
                    key=key,
                )
                uow.commit()
            _remember(states, key, "unknown")
        elif states.get(key) != "settled":  # after a start, or the first answer after an outage
            with store.unit_of_work() as uow:
                uow.alerts.resolve(f"{AlertKind.REVOCATION_UNKNOWN}:{key}", at=now)
                uow.commit()
            if states.get(key) == "unknown":
                log.warning(
                    "the revocation of certificates issued by %s can be checked again",
                    finding.issuer.subject.rfc4514_string(),
                )
            _remember(states, key, "settled")


def _remember(states: dict[str, str], key: str, state: str) -> None:
    with _REVOCATION_LOCK:
        if key not in states and len(states) >= _REVOCATION_REMEMBERED:
            states.clear()  # forgotten: settled again by one UPDATE each
        states[key] = state


def _revocation_summary(
    issuer: x509.Certificate, detail: str, validator: CertificateValidator
) -> str:
    """The alert's text: the CA, the sources and why they gave no answer (the same words while
    the cause is the same: a changed cause is told again), and what the policy does meanwhile."""
    if validator.revocation_policy == "hard":
        meanwhile = (
            'Under revocation_policy = "hard" its certificates are not accepted meanwhile: '
            "messages to a partner whose encryption certificate it issued are refused at submit "
            "or held (checked again every RetryInterval, given up when PersistDuration runs "
            "out), and messages signed with one are answered HTTP 503 for their senders to send "
            "again."
        )
    else:
        meanwhile = (
            'Under revocation_policy = "soft" its certificates are accepted meanwhile, '
            "unchecked for revocation."
        )
    seconds = int(FAILURE_MEMORY.total_seconds())
    return (
        "whether certificates issued by "
        f"{issuer.subject.rfc4514_string()} are revoked could not be found out: {detail}. "
        f"{meanwhile} A source that failed is asked again after {seconds} s at the earliest. "
        "Check that this server reaches the CA's CRL and OCSP addresses."
    )


@dataclass(frozen=True)
class SenderSignature:
    """How a partner's signature on an envelope fared: the check, the certificate it verified
    with (None: none did), and why that certificate is not acceptable now (None: it is)."""

    check: SignatureCheck
    certificate: x509.Certificate | None
    problem: CertificateProblem | None = None

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
            problem = certificate_problem(
                ctx.validator, certificate, "signing", now, store=ctx.store
            )
            return SenderSignature(check, certificate, problem)
        failed.append(check)
    return SenderSignature(failed[0], None)
