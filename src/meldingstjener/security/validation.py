"""Certificate validation: validity period, key usage, chain to our trust anchors, revocation.

Results are typed reasons, not exceptions, so the caller can map them to its own code set
(the AMQP error conditions are given per reason) and show an operator plain words. A
certificate that has expired since a message was signed can be checked at the signing time
by passing ``at``; each reason's detail names the dates so an operator sees what happened.
Each check also lists what the revocation sources of each issuer answered
(:class:`RevocationFinding`): a caller that alerts on a CA's services being away, and on their
coming back, reads it there.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from meldingstjener.security.certs import Usage, describe, same_certificate, usage_allowed
from meldingstjener.security.revocation import (
    Fetcher,
    RevocationChecker,
    RevocationStatus,
    urllib_fetch,
)

RevocationPolicy = Literal["soft", "hard"]
_MAX_CHAIN = 8


class Reason(enum.Enum):
    """Why a certificate is not acceptable."""

    EXPIRED = "expired"
    NOT_YET_VALID = "not-yet-valid"
    WRONG_USAGE = "wrong-usage"
    UNTRUSTED = "untrusted"
    REVOKED = "revoked"
    REVOCATION_UNKNOWN = "revocation-unknown"

    @property
    def message(self) -> str:
        return _MESSAGES[self]

    @property
    def amqp_error_condition(self) -> str:
        """The Helsenorge AMQP error condition for this reason."""
        return _AMQP[self]


_MESSAGES = {
    Reason.EXPIRED: "the certificate has expired",
    Reason.NOT_YET_VALID: "the certificate is not valid yet",
    Reason.WRONG_USAGE: "the certificate is not meant for this use (key usage)",
    Reason.UNTRUSTED: "the certificate was not issued by a certificate authority we trust",
    Reason.REVOKED: "the certificate has been revoked by its issuer",
    Reason.REVOCATION_UNKNOWN: "whether the certificate is revoked could not be found out",
}
_AMQP = {
    Reason.EXPIRED: "transport:expired-certificate",
    Reason.NOT_YET_VALID: "transport:invalid-certificate",
    Reason.WRONG_USAGE: "transport:invalid-certificate",
    Reason.UNTRUSTED: "transport:unverified-certificate",
    Reason.REVOKED: "transport:revoked-certificate",
    Reason.REVOCATION_UNKNOWN: "transport:unverified-certificate",
}


@dataclass(frozen=True)
class RevocationFinding:
    """What the revocation check of ``certificate`` (one of a chain) found out: GOOD or REVOKED
    (its issuer's CRL or OCSP responder answered), or UNKNOWN with ``detail`` saying which
    sources were asked and why none answered usably (the same words while the cause is the
    same). ``outage``: UNKNOWN because a source failed (see
    :attr:`~meldingstjener.security.revocation.RevocationResult.source_failed`), not because of
    the certificate itself."""

    issuer: x509.Certificate
    status: RevocationStatus
    detail: str
    certificate: x509.Certificate | None = None
    outage: bool = False


@dataclass(frozen=True)
class CertificateCheck:
    """``ok`` is False when any reason is fatal under the policy. Under the soft revocation
    policy REVOCATION_UNKNOWN is listed in ``reasons`` but does not make ``ok`` False."""

    ok: bool
    reasons: list[Reason] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    chain: list[x509.Certificate] = field(default_factory=list)
    checked_at: datetime | None = None
    revocation: tuple[RevocationFinding, ...] = ()

    @property
    def revocation_unknown_only(self) -> bool:
        """Refused (hard policy) only because whether it is revoked could not be found out, and
        only because a CRL or OCSP source failed: a state of the CA's services or of our network,
        which may pass. A certificate that names no source, that its responder does not know,
        or whose only CRL is another's or out of scope is not: waiting does not change that."""
        return (
            not self.ok
            and set(self.reasons) == {Reason.REVOCATION_UNKNOWN}
            and all(
                finding.outage
                for finding in self.revocation
                if finding.status is RevocationStatus.UNKNOWN
            )
        )

    def summary(self) -> str:
        if not self.reasons:
            return "certificate accepted"
        return "; ".join(self.details)


class CertificateValidator:
    """Validates partner (and own) certificates against configured trust anchors."""

    def __init__(
        self,
        trust_anchors: Sequence[x509.Certificate],
        *,
        intermediates: Sequence[x509.Certificate] = (),
        crls: Sequence[x509.CertificateRevocationList] = (),
        fetch_crls: bool = True,
        ocsp: bool = True,
        check_revocation: bool = True,
        revocation_policy: RevocationPolicy = "soft",
        fetcher: Fetcher = urllib_fetch,
        timeout: float = 5.0,
        cache_seconds: float = 3600.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if revocation_policy not in ("soft", "hard"):
            raise ValueError("revocation_policy must be 'soft' or 'hard'")
        self._anchors = list(trust_anchors)
        self._pool = list(intermediates) + self._anchors
        # Chains depend only on the certificate and the fixed pool; building one verifies
        # signatures, and the engine validates the same partner certificates for every message.
        self._chains: dict[x509.Certificate, tuple[list[x509.Certificate], str | None]] = {}
        self._check_revocation = check_revocation
        self._policy = revocation_policy
        self._clock = clock
        self._revocation = RevocationChecker(
            crls=crls,
            fetch_crls=fetch_crls,
            ocsp_enabled=ocsp,
            fetcher=fetcher,
            timeout=timeout,
            cache_seconds=cache_seconds,
            clock=clock,
        )

    @property
    def revocation_policy(self) -> RevocationPolicy:
        return self._policy

    def validate(
        self, cert: x509.Certificate, *, usage: Usage, at: datetime | None = None
    ) -> CertificateCheck:
        """Check ``cert`` for ``usage`` at time ``at`` (default: now)."""
        when = at or self._clock()
        reasons: list[Reason] = []
        details: list[str] = []
        findings: list[RevocationFinding] = []

        def add(reason: Reason, detail: str) -> None:
            if reason not in reasons:
                reasons.append(reason)
            details.append(f"{reason.message}: {detail}")

        _check_period(cert, when, add, "")
        if not usage_allowed(cert, usage):
            add(Reason.WRONG_USAGE, f"{describe(cert)} may not be used for {usage}")
        chain, problem = self._build_chain(cert)
        if problem is not None:
            add(Reason.UNTRUSTED, problem)
        else:
            for ca in chain[1:]:
                _check_period(ca, when, add, "issuing CA ")
            if self._check_revocation:
                findings = self._check_chain_revocation(chain, when, add)
        fatal = [r for r in reasons if r is not Reason.REVOCATION_UNKNOWN or self._policy == "hard"]
        return CertificateCheck(not fatal, reasons, details, chain, when, tuple(findings))

    def _build_chain(self, cert: x509.Certificate) -> tuple[list[x509.Certificate], str | None]:
        known = self._chains.get(cert)
        if known is None:
            known = self._chain_of(cert)
            if len(self._chains) > 1000:  # many partners' certificates; keep it bounded
                self._chains.clear()
            self._chains[cert] = known
        return list(known[0]), known[1]

    def _chain_of(self, cert: x509.Certificate) -> tuple[list[x509.Certificate], str | None]:
        chain = [cert]
        current = cert
        for _ in range(_MAX_CHAIN):
            if any(same_certificate(current, anchor) for anchor in self._anchors):
                return chain, None
            issuer = self._find_issuer(current, is_leaf=current is cert)
            if issuer is None:
                return chain, (
                    f"no trusted issuer found for {describe(current)} "
                    f"(issuer {current.issuer.rfc4514_string()})"
                )
            chain.append(issuer)
            current = issuer
        return chain, "the certificate chain is too long"

    def _find_issuer(self, cert: x509.Certificate, *, is_leaf: bool) -> x509.Certificate | None:
        for candidate in self._pool:
            if candidate.subject != cert.issuer or same_certificate(candidate, cert):
                continue
            if not _is_ca(candidate):
                continue
            try:
                cert.verify_directly_issued_by(candidate)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return candidate
        return None

    def _check_chain_revocation(
        self,
        chain: list[x509.Certificate],
        when: datetime,
        add: Callable[[Reason, str], None],
    ) -> list[RevocationFinding]:
        findings: list[RevocationFinding] = []
        for cert, issuer in itertools.pairwise(chain):
            if any(same_certificate(cert, anchor) for anchor in self._anchors):
                break
            result = self._revocation.check(cert, issuer, when)
            findings.append(
                RevocationFinding(
                    issuer, result.status, result.detail, cert, outage=result.source_failed
                )
            )
            if result.status is RevocationStatus.REVOKED:
                add(Reason.REVOKED, f"{describe(cert)} {result.detail}")
            elif result.status is RevocationStatus.UNKNOWN:
                add(Reason.REVOCATION_UNKNOWN, f"{describe(cert)}: {result.detail}")
        return findings


def _check_period(
    cert: x509.Certificate,
    when: datetime,
    add: Callable[[Reason, str], None],
    label: str,
) -> None:
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if start <= when <= end:
        return
    stamp = f"{when:%Y-%m-%d %H:%M} UTC"
    if when > end:
        add(
            Reason.EXPIRED,
            f"{label}{describe(cert)} expired on {end:%Y-%m-%d %H:%M} UTC (checked at {stamp})",
        )
    elif when < start:
        add(
            Reason.NOT_YET_VALID,
            f"{label}{describe(cert)} is valid from {start:%Y-%m-%d %H:%M} UTC "
            f"(checked at {stamp})",
        )


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    if not constraints.ca:
        return False
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return bool(usage.key_cert_sign)
