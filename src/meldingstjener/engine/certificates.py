"""Certificates in use, ours and our partners', checked for expiry: an alert 30 days ahead.

Runs at start and then daily (a ``certificate-check`` job). A certificate that has already
expired, or is not yet valid, is a critical alert: messages signed or encrypted with it fail.
The same round looks at each agreement's end (a CPA's End): nothing is sent to the partner
after it, so it is told 30 days ahead as well (``cpa-expiring``) and resolved once the agreement
is renewed (``partners set --cpa``, which calls :func:`judge_agreement_end` itself).
"""

from __future__ import annotations

import base64
from datetime import datetime, timedelta

from cryptography import x509
from sqlalchemy import select

from meldingstjener.engine.alerts import AlertKind, raise_alert
from meldingstjener.engine.context import EngineContext
from meldingstjener.registry.agreements import AgreementState
from meldingstjener.store.tables import AgreementRow, PartyRow
from meldingstjener.store.uow import ClaimedJob, UnitOfWork

CERTIFICATE_CHECK = "certificate-check"
WARN_BEFORE = timedelta(days=30)
EVERY = timedelta(days=1)


def _judge(
    uow: UnitOfWork, certificate: x509.Certificate, whose: str, her_id: str | None, now: datetime
) -> int:
    key = f"{whose}:{certificate.serial_number:x}"
    label = (
        f"{whose} certificate (serial {certificate.serial_number:x}, expires "
        f"{certificate.not_valid_after_utc:%Y-%m-%d})"
    )
    if certificate.not_valid_after_utc <= now or certificate.not_valid_before_utc > now:
        raise_alert(
            uow,
            AlertKind.CERTIFICATE_INVALID,
            f"the {label} is not valid now: messages using it fail. Renew or replace it.",
            at=now,
            partner_her_id=her_id,
            key=key,
        )
        return 1
    if certificate.not_valid_after_utc - now <= WARN_BEFORE:
        days = (certificate.not_valid_after_utc - now).days
        raise_alert(
            uow,
            AlertKind.CERTIFICATE_EXPIRING,
            f"the {label} expires in {days} day(s). Order and install the new one in time.",
            at=now,
            partner_her_id=her_id,
            key=key,
        )
        return 1
    return 0


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
            "our signing": ctx.keys.signing_certificate,
            "our encryption": ctx.keys.encryption_certificate,
        }
        for whose, certificate in own.items():
            found += _judge(uow, certificate, whose, None, now)
        partners = set(uow.session.scalars(select(AgreementRow.counterparty_her_id)))
        for party in uow.session.scalars(select(PartyRow).where(PartyRow.her_id.in_(partners))):
            for role, encoded in (
                ("signing", party.signing_certificate),
                ("encryption", party.encryption_certificate),
            ):
                if encoded:
                    certificate = x509.load_der_x509_certificate(base64.b64decode(encoded))
                    found += _judge(uow, certificate, f"{party.her_id}'s {role}", party.her_id, now)
        for agreement in uow.session.scalars(select(AgreementRow)):
            found += judge_agreement_end(uow, agreement, now)
        uow.jobs.schedule(CERTIFICATE_CHECK, now + EVERY, dedup_key=CERTIFICATE_CHECK)
        uow.commit()
    return found


def certificate_check_job(ctx: EngineContext, job: ClaimedJob) -> None:
    check_certificates(ctx)  # reschedules itself under the same key
