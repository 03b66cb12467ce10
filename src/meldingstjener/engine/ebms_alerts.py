"""What ``POST /ebms`` could not take, made visible to the operator.

A message that could be read and was refused is alerted by the inbound pipeline
(``message-refused``). Here: the payload store failing (a full disk, its directory gone), which
the sender only sees as a 503 to resend on, and an error nobody expected (a fault in the
server), answered 500. Both would otherwise be a line in the server log only. And a peer whose
requests are refused before anything can be answered in ebXML (400: no readable envelope; 413:
too large) ``REFUSED_IN_A_ROW`` times in a row: one such request may be a stray, a partner that
keeps sending them has a broken MSH, and only the HTTP answers told it so.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable

from meldingstjener.engine import recovery
from meldingstjener.engine.alerts import AlertKind, raise_alert
from meldingstjener.engine.context import EngineContext
from meldingstjener.model.privacy import passed_through
from meldingstjener.store.uow import UnitOfWork

log = logging.getLogger(__name__)

REFUSED_IN_A_ROW = 3  # at one process: each counts the requests it answers
# the key of the one ebms-refused alert for all peers that are not known parties
UNKNOWN = "unknown"


def refused(
    ctx: EngineContext, address: str, sender: str | None, code: str, http_status: int
) -> None:
    """A request answered 400, 408 or 413. Counted per the envelope's From HER-id when that could be
    read and is a party we know, else per the address it came from; an alert from the
    ``REFUSED_IN_A_ROW``-th on. What such a From says is not verified: a known party has an
    alert of its own, resolved by its next message stored; requests from anybody else share
    one (``unknown``), resolved by hand, so that no sender can open an alert per request."""
    known = sender if sender is not None and _known(ctx, sender) else None
    subject = recovery.sender(known) if known else recovery.peer(address)
    count = ctx.recovery.refused(subject)
    if count < REFUSED_IN_A_ROW:
        return
    whose = (
        f"whose envelopes name {known} as their sender (not verified)"
        if known
        else f"from address {address}"
        + (f", whose envelopes name {sender} as their sender (not verified)" if sender else "")
    )
    summary = (
        f"{count} requests in a row to POST /ebms {whose} were refused before they could be "
        f"answered in ebXML (the last: HTTP {http_status}, {code}, from address {address}). "
        "Only the sending MSH saw the answers: tell the partner."
    )

    def alert(uow: UnitOfWork) -> None:
        if known is None:
            raise_alert(
                uow,
                AlertKind.EBMS_REFUSED,
                summary + " Requests of senders that are not known parties share this alert, "
                "which no request resolves: resolve it by hand.",
                at=ctx.clock(),
                key=UNKNOWN,
            )
            return
        ctx.recovery.raise_alert(
            uow,
            AlertKind.EBMS_REFUSED,
            summary,
            subject=subject,
            key=subject,
            at=ctx.clock(),
            partner_her_id=known,
        )

    _raise(ctx, alert)


def _known(ctx: EngineContext, her_id: str) -> bool:
    """Whether ``her_id`` is a party we hold a signing certificate of (current or replaced)."""
    try:
        with ctx.store.unit_of_work() as uow:
            return ctx.directory.signing_certificates(uow, her_id).known
    except Exception:  # the database may be away: one of many, then
        log.warning("could not look up the party %s", her_id, exc_info=True)
        return False


def accepted(ctx: EngineContext, address: str) -> None:
    """A request from ``address`` was taken (answered 200) and an alert about it may be open:
    resolve it (engine/recovery; the caller asked ``went_through_quietly`` first)."""
    try:
        with ctx.store.unit_of_work() as uow:
            ctx.recovery.went_through(uow, (recovery.peer(address),), at=ctx.clock())
            uow.commit()
    except Exception:  # the message is stored: its sender gets its answer all the same
        log.exception("the alerts about %s could not be resolved", address)


def store_failed(ctx: EngineContext, exc: OSError) -> None:
    """The payload store failed while a message was received; the caller answers 503, and
    the sender resends. Until the store is mended, every message fails the same way here. One
    alert per ``serve`` process (its store may be a directory of its own), resolved when it
    stores a message again: a message stored by another does not say that this one can."""
    reason = errno.errorcode.get(exc.errno or 0) or type(exc).__name__
    log.error("the payload store failed while receiving (%s): answered 503", reason, exc_info=exc)

    def alert(uow: UnitOfWork) -> None:
        ctx.recovery.raise_alert(
            uow,
            AlertKind.STORE_FAILING,
            f"a message received by instance {ctx.instance} could not be stored: its payload "
            f"store failed ({reason}). It was answered 503 and its sender resends, until it "
            "gives up. Free disk space or mend the payload directory; the server log has the "
            "file.",
            subject=recovery.store(ctx.instance),
            key=ctx.instance,
            at=ctx.clock(),
        )

    _raise(ctx, alert)


def failed(ctx: EngineContext, exc: Exception) -> None:
    """An error nobody expected while receiving (a fault in the server or its data), answered
    500. The alert names the error's class only: its text may quote what was received."""
    name = type(exc).__name__[:100]
    # the traceback's places, not its texts: an error of a parser or schema may quote the
    # message, and its sender resends it, every time logged again
    log.error(
        "receiving a message failed unexpectedly (%s): answered 500\n%s", name, passed_through(exc)
    )

    def alert(uow: UnitOfWork) -> None:
        raise_alert(
            uow,
            AlertKind.EBMS_FAILING,
            f"a message received over POST /ebms failed with an unexpected error ({name}) and "
            "was answered 500; its sender resends, and may fail the same way. The server log "
            "has the details.",
            at=ctx.clock(),
            key=name,
        )

    _raise(ctx, alert)


def _raise(ctx: EngineContext, alert: Callable[[UnitOfWork], None]) -> None:
    # The database may be what failed too (SQLite on the full disk): the answer to the sender
    # must not change for it, so the log must do.
    try:
        with ctx.store.unit_of_work() as uow:
            alert(uow)
            uow.commit()
    except Exception:
        log.exception("the alert could not be stored")
