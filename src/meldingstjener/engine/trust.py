"""Is a partner's (or our own) certificate acceptable for this use, now? Which of a partner's
certificates does its signature verify with?

With trust anchors configured (``security.trust_anchors``), the security layer's validator checks
validity, key usage, the chain and revocation (CRL/OCSP, with the soft/hard policy). Without any
anchors only validity and key usage can be checked, and the log says so once: such a server
trusts the certificates in its register as given.

Whether a certificate is revoked may not be found out because its CA's CRL and OCSP addresses
cannot be reached, or answer nothing usable (an outage, which passes): a ``revocation-unknown``
alert per issuing CA and ``serve`` process says so, under either policy (soft: the certificate
is accepted unchecked; hard: it is refused for now, see :class:`CertificateProblem`, and a
received message or signal signed with it is deferred, :class:`InboundDeferred`), told once
while it lasts and resolved when every certificate of that CA it was raised for has been
answered about since. A status unknown because of the certificate itself (it names no address,
its responder does not know it, the only CRL is another's or out of scope) is no outage: no
alert, and under the hard policy it is refused as any other unacceptable certificate.

The alert is the process's own (its key and text name the instance, as ``clock-skew``'s do):
whether a CA's addresses answer is a matter of each host's network, and only the process that
failed knows when its own checks answer again, however seldom it checks (under the soft policy
only a message or signal to check brings one). Another process's answers say nothing of it, so
they do not resolve it; when that process stops, or is gone, the heartbeat of the others
resolves it with its other alerts (:mod:`meldingstjener.engine.instances`). Each process
remembers per store which CAs' alerts of its own it knows resolved, so a good answer costs no
statement: one ``UPDATE`` per CA after a start (the alert a run before may have left open), and
one when an outage ends.
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
from cryptography.hazmat.primitives import hashes
from lxml import etree
from sqlalchemy.exc import SQLAlchemyError

from meldingstjener.engine.alerts import AlertKind, keep_alert
from meldingstjener.engine.context import EngineContext
from meldingstjener.engine.directory import SigningCertificates
from meldingstjener.security.certs import Usage, usage_allowed
from meldingstjener.security.revocation import FAILURE_MEMORY, RevocationStatus
from meldingstjener.security.validation import (
    CertificateCheck,
    CertificateValidator,
    RevocationFinding,
)
from meldingstjener.security.xmldsig import SignatureCheck, verify_ebxml_envelope
from meldingstjener.store.uow import Store, UnitOfWork

log = logging.getLogger(__name__)

# A message held because its receiver's certificate cannot be checked (engine/transmit.py) is
# checked again this soon, or at its RetryInterval if sooner: a few failure memories, so the
# CA's first answer after an outage sends it within minutes, while a long outage costs each held
# message one look (and one event) per five minutes, not one per failure memory.
REVOCATION_RECHECK = 5 * FAILURE_MEMORY


class InboundDeferred(Exception):
    """A received message or signal cannot be judged now for a cause of ours that passes
    (whether the sender's signing certificate is revoked could not be found out: its CA's
    services are away from us). Nothing is stored and nothing refused or ignored: the HTTP
    endpoint answers 503 and the sender sends it again; the mail intake leaves the mail in the
    mailbox for its next round, until ``until`` (the message's TimeToLive, when it names one).
    ``detail`` says why, without patient data; the event is already in the log."""

    def __init__(self, detail: str, *, until: datetime | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.until = until


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
    instance: str | None = None,
) -> CertificateProblem | None:
    """None when acceptable; else why not. With ``store`` (and ``instance``, the name of this
    ``serve`` process there, which the alert is kept for), the revocation check's outcome is
    alerted there (``revocation-unknown``, see the module's text)."""
    if store is not None and instance is None:
        raise TypeError("a revocation-unknown alert is kept per instance: name it")
    if validator is not None:
        check = validator.validate(certificate, usage=usage, at=now)
        if store is not None and instance is not None:
            _report_revocation(store, instance, validator, check, now)
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


# Per store: for each of this process's revocation-unknown alerts (its key), what this process
# knows of it: None, resolved ("settled"); a set, open, for the certificates (SHA-256
# fingerprints) whose last check found a source failed. Weak: a store's engine gone, its memory
# goes too.
_REVOCATION_STATES: weakref.WeakKeyDictionary[Store, dict[str, set[bytes] | None]] = (
    weakref.WeakKeyDictionary()
)
_REVOCATION_LOCK = threading.Lock()
# issuing CAs remembered per store: many more than any deployment trusts
_REVOCATION_REMEMBERED = 1000
# certificates remembered per open alert: many more than one CA's partners. One beyond is not
# remembered, so the alert may be resolved while it still fails: its next check raises it again
_REVOCATION_CERTIFICATES = 10_000
# between the instance's name and the CA in the alert's key: no instance name holds it
# (config.py's ``instance_name`` pattern), so one instance's keys never begin another's prefix
_INSTANCE_END = "/"


def revocation_alert_key(instance: str, issuer: x509.Certificate) -> str:
    """The ``revocation-unknown`` alert's key (after the kind) of ``instance`` for certificates
    of ``issuer``: the instance's name, then a digest of the CA's name, which may be longer than
    the key has room for."""
    return f"{instance}{_INSTANCE_END}{_issuer_key(issuer)}"


def _issuer_key(issuer: x509.Certificate) -> str:
    """A digest of the CA's name: the alert's key before it named the instance, too."""
    name = issuer.subject.public_bytes()
    return f"issuer:{hashlib.sha256(name).hexdigest()[:32]}"


# The beginning of the key of a ``revocation-unknown`` alert raised before alerts named their
# instance: one per CA, which no process raises or resolves any more.
_UNNAMED_PREFIX = f"{AlertKind.REVOCATION_UNKNOWN}:issuer:"


def resolve_unnamed_revocation_alerts(uow: UnitOfWork, now: datetime) -> None:
    """Resolve the ``revocation-unknown`` alerts of a version before they named their instance,
    saying why: a process that still fails has raised one of its own meanwhile, and a CA that
    is not asked again would have left them open for ever."""
    for key, _ in uow.alerts.open_keys((), (_UNNAMED_PREFIX,)):
        uow.alerts.resolve_explained(
            key,
            resolution=" Resolved: this version keeps the alert per CA and serve process; a "
            "process that still cannot find out the revocation has raised its own.",
            at=now,
        )


def revocation_alerts_prefix(instance: str) -> str:
    """The beginning of the dedup key of every ``revocation-unknown`` alert of ``instance``:
    resolved with the instance's other alerts when it stops or is gone."""
    return f"{AlertKind.REVOCATION_UNKNOWN}:{instance}{_INSTANCE_END}"


def _report_revocation(
    store: Store,
    instance: str,
    validator: CertificateValidator,
    check: CertificateCheck,
    now: datetime,
) -> None:
    """Raise (kept: told once while it lasts, counted at each check) or resolve this
    instance's ``revocation-unknown`` alert of each issuing CA the check asked about.

    Raised only when a source failed (an outage); an unknown status that is the certificate's
    own (it names no source, its responder does not know it) is refused or accepted by the
    policy, and says nothing of the CA's services. Resolved when every certificate whose check
    found a source of the CA failed has been answered about since: one CA's certificates may
    name different addresses, one away and one answering, and the answering one's checks must
    not resolve an alert the other's raise again at once."""
    with _REVOCATION_LOCK:
        states = _REVOCATION_STATES.setdefault(store, {})
    for finding in check.revocation:
        key = revocation_alert_key(instance, finding.issuer)
        fingerprint = (
            finding.certificate.fingerprint(hashes.SHA256()) if finding.certificate else b""
        )
        if finding.outage:
            _raise_revocation(store, instance, validator, finding, key, fingerprint, states, now)
            continue
        with _REVOCATION_LOCK:
            known = key in states
            failing = states.get(key)
            if failing:
                failing.discard(fingerprint)
            ended = failing is not None and not failing  # the last failing one answered
            # after a start, the first answer settles what this instance's run before left open
            first = not known and finding.status is not RevocationStatus.UNKNOWN
        if ended or first:
            _settle_revocation(store, finding, key, states, now, ended=ended)


def _raise_revocation(
    store: Store,
    instance: str,
    validator: CertificateValidator,
    finding: RevocationFinding,
    key: str,
    fingerprint: bytes,
    states: dict[str, set[bytes] | None],
    now: datetime,
) -> None:
    """A source of the CA failed for this certificate: remember it failing, and raise or count
    this instance's alert of the CA (logged when this process did not know it open)."""
    with _REVOCATION_LOCK:
        failing = states.get(key)
        raised_here = failing is not None
        if failing is None:
            _make_room(states, key)
            failing = states[key] = set()
        if len(failing) < _REVOCATION_CERTIFICATES:
            failing.add(fingerprint)
    if not raised_here:
        log.warning(
            "whether certificates issued by %s are revoked could not be found out: %s",
            finding.issuer.subject.rfc4514_string(),
            finding.detail,
        )
    try:
        with store.unit_of_work() as uow:
            keep_alert(
                uow,
                AlertKind.REVOCATION_UNKNOWN,
                _revocation_summary(instance, finding.issuer, finding.detail, validator),
                at=now,
                key=key,
            )
            uow.commit()
    except SQLAlchemyError as exc:  # told at the next check; the message goes on
        _alert_not_stored(key, exc)


def _settle_revocation(
    store: Store,
    finding: RevocationFinding,
    key: str,
    states: dict[str, set[bytes] | None],
    now: datetime,
    *,
    ended: bool,
) -> None:
    """Resolve this instance's alert of the CA: the outage it saw has ``ended``, or (the first
    answer since its start) whatever its run before left open, and the CA's alert of a version
    before alerts named their instance (nobody raises or resolves that one any more; a process
    still failing has raised its own). Remembered as settled."""
    try:
        with store.unit_of_work() as uow:
            uow.alerts.resolve(
                f"{AlertKind.REVOCATION_UNKNOWN}:{key}",
                f"{AlertKind.REVOCATION_UNKNOWN}:{_issuer_key(finding.issuer)}",
                at=now,
            )
            uow.commit()
    except SQLAlchemyError as exc:  # not remembered as settled: the next answer tries again
        _alert_not_stored(key, exc)
        return
    if ended:
        log.warning(
            "the revocation of certificates issued by %s can be checked again",
            finding.issuer.subject.rfc4514_string(),
        )
    with _REVOCATION_LOCK:
        if states.get(key):
            return  # a check meanwhile found the CA failing again: that outage is open
        _make_room(states, key)
        states[key] = None


def _make_room(states: dict[str, set[bytes] | None], key: str) -> None:
    """Before ``key`` is noted (the caller holds the lock): forget every CA when the memory is
    full. A forgotten CA is settled again by one ``UPDATE`` at its next answer."""
    if key not in states and len(states) >= _REVOCATION_REMEMBERED:
        states.clear()


def _alert_not_stored(key: str, exc: SQLAlchemyError) -> None:
    """The alert's bookkeeping is not the message's: a store that cannot be written now fails
    the message's own storing, with its own answer (503, store-failing), not this."""
    log.warning(
        "the %s alert %s could not be stored: %s",
        AlertKind.REVOCATION_UNKNOWN,
        key,
        type(exc).__name__,
    )


def _revocation_summary(
    instance: str, issuer: x509.Certificate, detail: str, validator: CertificateValidator
) -> str:
    """The alert's text: the instance, the CA, the sources and why they gave no answer (the same
    words while the cause is the same: a changed cause is told again), and what the policy does
    meanwhile."""
    if validator.revocation_policy == "hard":
        minutes = int(REVOCATION_RECHECK.total_seconds() // 60)
        meanwhile = (
            'Under revocation_policy = "hard" its certificates are not accepted meanwhile: '
            "messages to a partner whose encryption certificate it issued are refused at submit "
            f"or held (checked again within {minutes} minutes, given up when PersistDuration "
            "runs out), and messages and signals signed with one are answered HTTP 503 for their "
            "senders to send again (by mail: left in the mailbox)."
        )
    else:
        meanwhile = (
            'Under revocation_policy = "soft" its certificates are accepted meanwhile, '
            "unchecked for revocation."
        )
    seconds = int(FAILURE_MEMORY.total_seconds())
    return (
        f"Instance {instance}: whether certificates issued by "
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
                ctx.validator, certificate, "signing", now, store=ctx.store, instance=ctx.instance
            )
            return SenderSignature(check, certificate, problem)
        failed.append(check)
    return SenderSignature(failed[0], None)
