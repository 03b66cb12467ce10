"""Certificates in use, ours and our partners', checked for expiry: an alert 30 days ahead.

Runs at start and then daily (a ``certificate-check`` job). A certificate that has already
expired, or is not yet valid, is a critical alert: messages signed or encrypted with it fail.
Both are states that last, looked at every day and at every start: each is told once
(:func:`~meldingstjener.engine.alerts.keep_alert`), and told again only when its text changes,
which it does at 7 days and at 1 day before the end (the text names the threshold passed, and
the days left on the day it was told: kept as told until the next threshold, as the days left
change daily). Our own are named by role (signing, encryption), with the HER-ids they serve and
the key's file from ``[keys]``. A holder (ours, or a partner's, per role) whose
certificate in use now is another one (renewed: another serial) has its open alerts about the
one before resolved, and an expiring alert gives way to the invalid one of the same
certificate. The advice differs: our own is renewed by us ("Renewing our certificates" in the
README), a partner's only by the partner (the register sync then brings its new one).

The same round looks at each agreement's end (a CPA's End): nothing is sent to the partner
after it, so it is told 30 days ahead as well (``cpa-expiring``) and resolved once the agreement
is renewed (``partners set --cpa``, which calls :func:`judge_agreement_end` itself).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from sqlalchemy import select

from meldingstjener.engine.alerts import AlertKind, keep_alert, raise_alert
from meldingstjener.engine.context import EngineContext
from meldingstjener.model.privacy import redact
from meldingstjener.registry.agreements import AgreementState
from meldingstjener.store.tables import AgreementRow, PartyRow
from meldingstjener.store.uow import ClaimedJob, UnitOfWork

CERTIFICATE_CHECK = "certificate-check"
WARN_BEFORE = timedelta(days=30)
EVERY = timedelta(days=1)
# the thresholds at which an expiring certificate is told again, nearest last: the alert's text
# names the one passed (see _expiring_within)
TELL_AGAIN_WITHIN = (timedelta(days=7), timedelta(days=1))
_CERTIFICATE_KINDS = (AlertKind.CERTIFICATE_EXPIRING, AlertKind.CERTIFICATE_INVALID)


def _expiring_within(left: timedelta) -> str:
    """The threshold ``left`` has passed, in words: what changes (and is told again) only at
    30, 7 and 1 day(s) before the end, not every day."""
    within = WARN_BEFORE
    for threshold in TELL_AGAIN_WITHIN:
        if left <= threshold:
            within = threshold
    return "within a day" if within <= timedelta(days=1) else f"within {within.days} days"


def _days_left(left: timedelta) -> str:
    """The whole days ``left``, in words."""
    if left.days < 1:
        return "less than a day was left"
    return "1 day was left" if left.days == 1 else f"{left.days} days were left"


@dataclass(frozen=True)
class Holder:
    """Whose certificate is judged, as its alert names it: ``whose`` is the dedup key's part
    (``our signing``, ``<HER-id>'s encryption``: kept as it was, the alerts open under it
    must still be found); ``label`` what the text calls it."""

    whose: str
    label: str
    her_id: str | None = None  # the partner's; None for ours
    details: str = ""  # more of what it is (ours: for whom, and its key's file)


def _judge(
    uow: UnitOfWork, certificate: x509.Certificate, holder: Holder, now: datetime
) -> str | None:
    """Tell the state of the certificate ``holder`` uses now (kept: told once, again at a
    threshold): the dedup key of the alert open for it, or None when it is fine."""
    key = f"{holder.whose}:{certificate.serial_number:x}"
    details = f"; {holder.details}" if holder.details else ""
    label = f"{holder.label} (serial {certificate.serial_number:x}{details})"
    her_id = holder.her_id
    if her_id is None:
        renew = "Renew it: see 'Renewing our certificates' in the README."
    else:
        renew = (
            f"Only {her_id} can renew it: ask it to, if it has not. Once it publishes the new "
            "one in the address register, the register sync brings it here (a partner in "
            "[[partners]]: install its new certificate there) and this alert is resolved."
        )
    end = certificate.not_valid_after_utc
    left = end - now
    if end <= now:
        kind: AlertKind | None = AlertKind.CERTIFICATE_INVALID
        summary = f"{label} has expired ({end:%Y-%m-%d %H:%M} UTC): messages using it fail. {renew}"
    elif certificate.not_valid_before_utc > now:
        kind = AlertKind.CERTIFICATE_INVALID
        summary = (
            f"{label} is not valid before {certificate.not_valid_before_utc:%Y-%m-%d %H:%M} "
            f"UTC: messages using it fail. {renew}"
        )
    elif left <= WARN_BEFORE:
        kind = AlertKind.CERTIFICATE_EXPIRING
        told = f"{label} expires {_expiring_within(left)}, on {end:%Y-%m-%d}: "
        summary = _told_before(uow, f"{kind}:{key}", told) or (
            f"{told}{_days_left(left)} on {now:%Y-%m-%d}, when this was told. {renew}"
        )
    else:
        kind = None
    if kind is None:
        return None
    keep_alert(uow, kind, summary, at=now, partner_her_id=her_id, key=key)
    return f"{kind}:{key}"


def _told_before(uow: UnitOfWork, dedup_key: str, beginning: str) -> str | None:
    """The text of the open alert ``dedup_key`` when it begins with ``beginning`` (the same
    certificate, the same threshold passed): kept as it was told, days left and all, so that
    the days left, which change daily, do not tell it again every day."""
    open_alert = uow.alerts.by_key(dedup_key)
    if open_alert is None or open_alert.resolved_at is not None:
        return None
    stored = redact(beginning) or ""  # as the summary was stored
    return open_alert.summary if open_alert.summary.startswith(stored) else None


def _ours(ctx: EngineContext, role: str) -> Holder:
    """Our ``role`` certificate, with the HER-ids it serves and where its key is (``[keys]``)."""
    served = ", ".join(sorted(ctx.own_her_ids, key=int))
    details = [f"for HER-id {served}"] if served else []
    source = ctx.keys.sources.get(role)
    if source:
        details.append(source)
    return Holder(f"our {role}", f"our {role} certificate", details="; ".join(details))


def _resolve_replaced(
    uow: UnitOfWork, holders: set[str], kept: set[str | None], now: datetime
) -> None:
    """Resolve the open certificate alerts of ``holders`` (ours or a partner's, per role) that
    are not about the state just told (``kept``): a certificate the holder no longer uses
    (renewed: its key ``whose:serial`` is never judged again), or one's expiring alert once it
    is invalid. The alerts of other keys under these kinds (``our-decryption:<sender>``, of a
    message our keys could not decrypt) are not the check's: a holder's key ends in a serial."""
    stale = [
        key
        for key, _ in uow.alerts.open_keys(_CERTIFICATE_KINDS)
        if key not in kept and key.split(":", 1)[1].rpartition(":")[0] in holders
    ]
    if stale:
        uow.alerts.resolve(*stale, at=now)


def judge_agreement_end(uow: UnitOfWork, agreement: AgreementRow, now: datetime) -> int:
    """Raise ``cpa-expiring`` for ``agreement`` when its end (``valid_to``) is within 30 days
    or passed, else resolve it (a renewed CPA ends later): 1 when raised, else 0."""
    key = f"{agreement.our_her_id}:{agreement.counterparty_her_id}"
    end = agreement.valid_to
    if end is None or agreement.state == AgreementState.ENDED.value or end - now > WARN_BEFORE:
        uow.alerts.resolve(f"{AlertKind.CPA_EXPIRING}:{key}", at=now)
        return 0
    when = (
        f"ended {end:%Y-%m-%d %H:%M} UTC: nothing is sent to it"
        if end <= now
        else f"ends {end:%Y-%m-%d} (in {(end - now).days} day(s)): nothing is sent to it after"
    )
    raise_alert(
        uow,
        AlertKind.CPA_EXPIRING,
        f"the agreement (CPA {agreement.cpa_id or 'none'}) with HER-id "
        f"{agreement.counterparty_her_id} {when}. Get the renewed CPA from the partner (or "
        "NHN's CPPA service) and apply it with 'partners set --cpa'.",
        at=now,
        partner_her_id=agreement.counterparty_her_id,
        key=key,
    )
    return 1


def check_certificates(ctx: EngineContext) -> int:
    """Raise alerts for certificates in use that expire within 30 days or are invalid, and for
    agreements that end within 30 days."""
    now = ctx.clock()
    found = 0
    with ctx.store.unit_of_work() as uow:
        own = {
            "signing": ctx.keys.signing_certificate,
            "encryption": ctx.keys.encryption_certificate,
        }
        # the holders judged and the alert each has open now: the others of these holders
        # are about certificates no longer in use
        holders: set[str] = set()
        kept: set[str | None] = set()
        for role, certificate in own.items():
            ours = _ours(ctx, role)
            holders.add(ours.whose)
            kept.add(_judge(uow, certificate, ours, now))
        partners = set(uow.session.scalars(select(AgreementRow.counterparty_her_id)))
        for party in uow.session.scalars(select(PartyRow).where(PartyRow.her_id.in_(partners))):
            for role, encoded in (
                ("signing", party.signing_certificate),
                ("encryption", party.encryption_certificate),
            ):
                theirs = Holder(
                    f"{party.her_id}'s {role}",
                    f"the {role} certificate of HER-id {party.her_id}",
                    party.her_id,
                )
                holders.add(theirs.whose)  # one it no longer has is not in use either
                if encoded:
                    certificate = x509.load_der_x509_certificate(base64.b64decode(encoded))
                    kept.add(_judge(uow, certificate, theirs, now))
        _resolve_replaced(uow, holders, kept, now)
        found += len(kept - {None})
        for agreement in uow.session.scalars(select(AgreementRow)):
            found += judge_agreement_end(uow, agreement, now)
        uow.jobs.schedule(CERTIFICATE_CHECK, now + EVERY, dedup_key=CERTIFICATE_CHECK)
        uow.commit()
    return found


def certificate_check_job(ctx: EngineContext, job: ClaimedJob) -> None:
    check_certificates(ctx)  # reschedules itself under the same key
