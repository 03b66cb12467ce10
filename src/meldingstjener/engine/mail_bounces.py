"""A bounce of one of our mails, tied to the message it returns (the mail channel's intake
calls :func:`record_bounce`; what a bounce says is read by :mod:`meldingstjener.transport.bounce`).

A partner's mail server that cannot deliver our mail sends it back to our From address, and it
lands in the mailbox we collect. It is no ebXML message, and was quarantined as unreadable with
the advice to ask its sender to resend: the sender is a mail server, and the message that did
not arrive was ours. Here it becomes an event on that message and a ``mail-bounced`` alert
naming the address that refused it and the DSN's status and action.

The message's status is left alone, and its retries go on: a refusal may pass (a full mailbox,
a relay's hiccup, an address the partner fixes), and a later attempt may arrive. The alert is
per message: it tells which message has not arrived. What settles the message's fate resolves
it (by :func:`bounce_alert_key`): its Acknowledgment, or its receiver's MessageError
(engine.signals: it did arrive after all), or its AppRec (engine.receipts: the receiver has it,
even when its Acknowledgment was lost), or the give-up (engine.transmit: the not-delivered alert
takes over). A per-partner alert would be resolved by any other message's Acknowledgment while
this one still has not arrived.
"""

from __future__ import annotations

from meldingstjener.engine.alerts import AlertKind, raise_alert
from meldingstjener.engine.context import EngineContext
from meldingstjener.model import Direction, OutboundStatus
from meldingstjener.store.uow import EventKind
from meldingstjener.transport.bounce import Bounce

# The message's fate is known without the bounce: the receiver has it (an Acknowledgment, an
# AppRec, or its MSH's MessageError, each alerted as need be), or it was given up (alerted as
# not delivered). A bounce of an earlier attempt is then history, worth an event only.
_SETTLED = frozenset(
    {
        OutboundStatus.TRANSPORT_ACKNOWLEDGED.value,
        OutboundStatus.TRANSPORT_ERROR.value,
        OutboundStatus.NOT_DELIVERED.value,
        OutboundStatus.APPREC_OK.value,
        OutboundStatus.APPREC_REJECTED.value,
        OutboundStatus.APPREC_OK_WITH_ERRORS.value,
    }
)


def bounce_alert_key(message_id: str) -> str:
    """The ``mail-bounced`` alert of the sent message ``message_id``, which each of the steps
    that settle its fate (the module's docstring, and :data:`_SETTLED`) resolves."""
    return f"{AlertKind.MAIL_BOUNCED}:{message_id}"


def record_bounce(ctx: EngineContext, bounce: Bounce, *, forget: str | None = None) -> bool:
    """Record ``bounce`` on the outbound message it returns, with an alert when it failed and
    the message has not arrived yet; return False when it names none of our messages (nothing
    is recorded then). ``forget``: a state key deleted in the same commit (the mail's try
    count), so that the bounce and its end are one step."""
    if bounce.ebxml_message_id is None:
        return False
    now = ctx.clock()
    with ctx.store.unit_of_work() as uow:
        row = uow.messages.by_ebxml_id(Direction.OUTBOUND, bounce.ebxml_message_id)
        if row is None:
            return False
        what = "a delivery status notification" if bounce.dsn else "a bounce without a status"
        if bounce.failed:
            detail = (
                f"the mail was returned as undeliverable: {bounce.refused_by} refused it "
                f"({what}: {bounce.codes}); the message is sent again as its agreement says"
            )
        else:
            detail = f"{what} about the mail: {bounce.codes} (for {bounce.refused_by})"
        uow.events.record(
            row.id,
            EventKind.ERROR if bounce.failed else EventKind.NOTE,
            actor="smtp",
            code="mail-bounced" if bounce.failed else "mail-dsn",
            detail=detail,
            ebxml_message_id=row.ebxml_message_id,
            at=now,
        )
        if bounce.failed and row.status not in _SETTLED:
            raise_alert(
                uow,
                AlertKind.MAIL_BOUNCED,
                f"Message {row.id} (eb:MessageId {row.ebxml_message_id}) to {row.to_her_id} "
                f"came back by mail as undeliverable: {bounce.refused_by} refused it "
                f"({bounce.codes}). It is sent again as its agreement says. Check the "
                "partner's EDI address (in the address register or the agreement; a 5.1.x "
                "status says the address does not exist) and whether its mail service takes "
                "mail. (The bounce itself is not kept: it may quote the message.)",
                at=now,
                message_id=row.id,
                partner_her_id=row.to_her_id,
            )
        if forget is not None:
            uow.state.delete(forget)
        uow.commit()
    return True


__all__ = ["bounce_alert_key", "record_bounce"]
