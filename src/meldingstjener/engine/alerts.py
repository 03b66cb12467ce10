"""Alert (avvik) kinds and the helpers that raise them, deduplicated.

Every alert says what happened, to which message or partner, and what to do; never patient data.
:func:`raise_alert` tells each occurrence (a webhook call each); :func:`keep_alert` is for a
state that lasts and is looked at again round after round, told once.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from meldingstjener.model.privacy import redact
from meldingstjener.store.uow import UnitOfWork


class AlertKind(StrEnum):
    NOT_DELIVERED = "not-delivered"
    MESSAGE_ERROR_RECEIVED = "message-error-received"
    APPREC_REJECTED = "apprec-rejected"
    APPREC_MISSING = "apprec-missing"
    MISADDRESSED_RECEIVED = "misaddressed-received"
    CERTIFICATE_EXPIRING = "certificate-expiring"
    CERTIFICATE_INVALID = "certificate-invalid"
    PARTNER_UNREACHABLE = "partner-unreachable"
    SIGNAL_UNDELIVERED = "signal-undelivered"
    MAIL_QUARANTINED = "mail-quarantined"
    APPREC_UNSENT = "apprec-unsent"
    INBOX_WAITING = "inbox-waiting"
    APPREC_OWED = "apprec-owed"
    CLOCK_SKEW = "clock-skew"
    MAILBOX_UNREACHABLE = "mailbox-unreachable"
    MAIL_TOO_LARGE = "mail-too-large"
    WEBHOOK_DISABLED = "webhook-disabled"
    REGISTER_SYNC_FAILED = "register-sync-failed"
    JOB_FAILING = "job-failing"
    OUTBOX_REFUSED = "outbox-refused"
    OUTBOX_HELD = "outbox-held"
    OUTBOX_STUCK = "outbox-stuck"
    INSTANCE_GONE = "instance-gone"
    JOBS_OVERDUE = "jobs-overdue"
    INSTANCE_NAME_TAKEN = "instance-name-taken"
    STORE_UNREACHABLE = "store-unreachable"
    ACK_MISSING = "ack-missing"
    SIGNAL_UNTRUSTED = "signal-untrusted"
    MESSAGE_REFUSED = "message-refused"
    STORE_FAILING = "store-failing"
    EBMS_FAILING = "ebms-failing"
    EBMS_REFUSED = "ebms-refused"
    MAIL_BOUNCED = "mail-bounced"
    REGISTER_PARTIES_REFUSED = "register-parties-refused"
    MAIL_STUCK = "mail-stuck"
    FOLDER_UNSAFE = "folder-unsafe"
    VALIDATION_FAILED = "validation-failed"
    CPA_EXPIRING = "cpa-expiring"
    REVOCATION_UNKNOWN = "revocation-unknown"


SEVERITY = {
    AlertKind.NOT_DELIVERED: "critical",
    AlertKind.MESSAGE_ERROR_RECEIVED: "error",
    AlertKind.APPREC_REJECTED: "error",
    AlertKind.APPREC_MISSING: "warning",
    AlertKind.MISADDRESSED_RECEIVED: "warning",
    AlertKind.CERTIFICATE_EXPIRING: "warning",
    AlertKind.CERTIFICATE_INVALID: "critical",
    AlertKind.PARTNER_UNREACHABLE: "warning",
    AlertKind.SIGNAL_UNDELIVERED: "warning",
    AlertKind.MAIL_QUARANTINED: "error",
    AlertKind.APPREC_UNSENT: "error",
    AlertKind.INBOX_WAITING: "error",
    AlertKind.APPREC_OWED: "warning",
    AlertKind.CLOCK_SKEW: "error",
    AlertKind.MAILBOX_UNREACHABLE: "error",
    AlertKind.MAIL_TOO_LARGE: "error",
    AlertKind.WEBHOOK_DISABLED: "error",
    AlertKind.REGISTER_SYNC_FAILED: "error",
    AlertKind.JOB_FAILING: "error",
    AlertKind.OUTBOX_REFUSED: "error",
    AlertKind.OUTBOX_HELD: "warning",
    AlertKind.OUTBOX_STUCK: "error",
    AlertKind.INSTANCE_GONE: "error",
    AlertKind.JOBS_OVERDUE: "error",
    AlertKind.INSTANCE_NAME_TAKEN: "error",
    AlertKind.STORE_UNREACHABLE: "error",
    AlertKind.ACK_MISSING: "warning",
    AlertKind.SIGNAL_UNTRUSTED: "error",
    AlertKind.MESSAGE_REFUSED: "error",
    AlertKind.STORE_FAILING: "critical",
    AlertKind.EBMS_FAILING: "error",
    AlertKind.EBMS_REFUSED: "warning",
    AlertKind.MAIL_BOUNCED: "error",
    AlertKind.REGISTER_PARTIES_REFUSED: "error",
    AlertKind.MAIL_STUCK: "error",
    AlertKind.FOLDER_UNSAFE: "error",
    AlertKind.VALIDATION_FAILED: "error",
    AlertKind.CPA_EXPIRING: "warning",
    AlertKind.REVOCATION_UNKNOWN: "error",
}


def raise_alert(
    uow: UnitOfWork,
    kind: AlertKind,
    summary: str,
    *,
    at: datetime,
    message_id: str | None = None,
    partner_her_id: str | None = None,
    key: str | None = None,
) -> None:
    """Open or count an alert. The dedup key is per message when there is one, else per partner."""
    uow.alerts.raise_alert(
        kind.value,
        severity=SEVERITY[kind],
        dedup_key=_dedup_key(kind, key, message_id, partner_her_id),
        summary=summary,
        message_id=message_id,
        partner_her_id=partner_her_id,
        at=at,
    )


def keep_alert(
    uow: UnitOfWork,
    kind: AlertKind,
    summary: str,
    *,
    at: datetime,
    message_id: str | None = None,
    partner_her_id: str | None = None,
    key: str | None = None,
) -> None:
    """Report a state that lasts, found again at each round of a check (a mailbox that cannot
    be collected, a clock that is off): told once, not once a round.

    The open alert of the same text is counted and seen again (``count``, ``last_seen``: the
    operator sees how long it lasts) without being told: its ``changed_at`` stays, which is
    what webhooks follow, so a weekend of a password expired is one pager call, not one per
    poll. It is raised (told) when none is open, and when its text changed: the text is the
    news, so a caller keeps out of it what changes every round without news (a count of
    rounds, a figure that jitters) and puts in it what the operator must hear of again (the
    cause, which mails)."""
    dedup_key = _dedup_key(kind, key, message_id, partner_her_id)
    # the summary as raise_alert stores it
    if not uow.alerts.counted_again(dedup_key, redact(summary) or "", at=at):
        raise_alert(
            uow,
            kind,
            summary,
            at=at,
            message_id=message_id,
            partner_her_id=partner_her_id,
            key=key,
        )


def _dedup_key(
    kind: AlertKind, key: str | None, message_id: str | None, partner_her_id: str | None
) -> str:
    """Per ``key`` when given, else per message when there is one, else per partner."""
    return f"{kind}:{key or message_id or partner_her_id or 'global'}"
