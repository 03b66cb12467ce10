"""Webhooks: tell client URLs about new messages, status changes and alerts.

The dispatcher follows the message log and the alerts table with cursors kept in the store (the
log's cursor never passes an event id that may still commit, see ``_settled_up_to``), and turns
news into ``webhook_deliveries`` rows (one per webhook and event, unique, so a restart never
notifies twice for the same event). Deliveries are POSTed as JSON with an HMAC-SHA256 signature
over ``<timestamp>.<body>`` in ``X-Meldingstjener-Signature``, and the delivery's random id (a
UUID made with its row, ``DELIVERY_HEADER`` and the body's ``deliveryId``), by which a receiver
knows a repeat: the row ids were handed out again, for other news, by a store restored from an
older backup. A call ends by its deadline
(``CALL_TIMEOUTS`` time-outs, however its receiver paces its answer), and at most ``ANSWER_BYTES``
of the answer are read. Failures are retried with doubling waits; after ``disable_after_failures``
failures in a row the webhook is disabled and an alert raised. A webhook whose call failed pauses
as a whole until its next try, so the failures in a row are tries spread over the doubling waits
(with the defaults, ten of them span about 40 minutes), not the deliveries that happened to be due
at once. Bodies carry ids, HER-ids and statuses only, never message content. Up to
``parallel_webhooks`` webhooks are called at once, each only at addresses the target policy allows
(:mod:`~meldingstjener.integration.webhook_targets`), and a webhook hears only of what its client's
scopes let it read (``EVENT_SCOPES``). Every ``serve`` runs a dispatcher: a call is claimed before
it is made (``_claim``), and on PostgreSQL one process at a time collects (``COLLECT_LOCK``).
Deliveries sent or given up are purged after ``delivery_retention_days``
(:meth:`WebhookDispatcher.purge`, hourly). A delivery reads and writes rows only, never a
message's content: a payload share away stops none. While the database is full the deliveries
wait for it as the jobs do (:meth:`WebhookDispatcher.turn`): nothing counted against a receiver,
no traceback, the outage told by the store-failing period. A stop ends the round: no delivery
is claimed after it, and a call under way when the process ends is cut as by a crash (made
again under its delivery id once its claim runs out; see :meth:`WebhookDispatcher._in_parallel`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import ColumnElement, delete, exists, func, or_, select, text, update

from meldingstjener.config import WebhookSettings
from meldingstjener.engine.alerts import SEVERITY, AlertKind
from meldingstjener.engine.context import EngineContext
from meldingstjener.engine.copies import first_original
from meldingstjener.engine.failing_jobs import STORE_PAUSE, refused_by_store
from meldingstjener.httpbody import BodyTooLarge, BodyTooSlow, read_capped
from meldingstjener.integration.webhook_http import call_deadline, webhook_client
from meldingstjener.integration.webhook_targets import TargetPolicy, TargetRefused
from meldingstjener.model import Direction
from meldingstjener.store.database import RoundFailures
from meldingstjener.store.instance_lock import name_key
from meldingstjener.store.tables import (
    AlertRow,
    ApiClientRow,
    Credential,
    EventRow,
    MessageRow,
    WebhookDeliveryRow,
    WebhookRow,
)
from meldingstjener.store.uow import EventKind, UnitOfWork

log = logging.getLogger(__name__)

# The threads that call several webhooks at once in a round (``_in_parallel``)
CALL_THREADS = "webhook-call"

EVENT_CURSOR = "webhooks.event_cursor"
# how long a missing event id may hold the cursor back before it counts as rolled back
EVENT_GAP_SECONDS = 60.0
EVENT_BATCH = 500
ALERT_CURSOR = "webhooks.alert_cursor"
ALERT_LOOKBACK = timedelta(seconds=60)  # see _collect_alerts
SIGNATURE_HEADER = "X-Meldingstjener-Signature"
TIMESTAMP_HEADER = "X-Meldingstjener-Timestamp"
# A delivery's id, the same in every call of it and in no call of another delivery, whatever
# backup the store was restored from (a UUID; the row ids were handed out again after a restore)
DELIVERY_HEADER = "X-Meldingstjener-Delivery"
WEBHOOK_DISABLED = AlertKind.WEBHOOK_DISABLED.value
# A claimed delivery waits this many call timeouts (plus half a minute) before another process
# may take it: longer than a call may last (CALL_TIMEOUTS), or it would be sent twice
CLAIM_CALLS = 4
# A call, from its connect to the last byte of its answer read, ends after this many
# timeout_seconds (httpx's timeout bounds each read on its own: a receiver trickling its
# answer held the call as long as it liked, past the claim, and the dispatcher with it).
CALL_TIMEOUTS = 2
# What is read of a receiver's answer (it says nothing we use; its status is the answer)
ANSWER_BYTES = 4096
# The error recorded for a call cut off at its deadline
TOO_SLOW = "too-slow"
# The error recorded for a call to an address the target policy refuses (webhook_targets)
TARGET_REFUSED = "target-refused"
# Finished deliveries are purged this often (and at a dispatcher's first round; a purge that
# failed waits as long), so many at a time
PURGE_EVERY_SECONDS = 3600.0
PURGE_BATCH = 5000
# One round serves at most this many webhooks, and makes at most this many calls to each
HOOKS_PER_ROUND = 500
CALLS_PER_HOOK = 100
# PostgreSQL: the advisory lock (transaction-scoped) one process holds while it turns news into
# deliveries; the others skip that round instead of inserting the same rows
COLLECT_LOCK = (0x6D74_7768, 1)  # "mtwh"
# PostgreSQL: the first key of the advisory lock (transaction-scoped) a registration holds on its
# client (the second key is from the client's name and credential, see hold_registrations_of)
REGISTER_LOCK_SPACE = 0x6D74_7772  # "mtwr"


# Active, and not of a revoked API-key client: revocation ends such a client's webhooks
# (end_webhooks_of), and one it registered with its key in the seconds a server still knew the
# key is never fed. A JWT client's webhook is not its: a token's client_id may be the name of a
# revoked key client (an EPJ that moved from a key to HelseID), and its webhooks were
# registered, then never called.
_LIVE = (
    WebhookRow.active.is_(True),
    ~(
        (WebhookRow.credential == Credential.API_KEY)
        & exists().where(
            ApiClientRow.name == WebhookRow.client_name, ApiClientRow.revoked_at.is_not(None)
        )
    ),
)


def live(jwt_issuer: str | None) -> tuple[ColumnElement[bool], ...]:
    """The webhooks to feed and call: ``_LIVE``, and a JWT client's only while the API takes
    tokens of the issuer it had when it registered the webhook (``jwt_issuer``: the issuer
    configured now, ``[api] jwt_issuer``).

    A JWT client is configured by the issuer the operator names, not by us: with
    ``[api] jwt_issuer`` removed or changed its tokens are refused, and its webhooks must go
    quiet with it (they went on telling it of every new message). What is owed to them waits,
    and goes when that issuer is configured again. A client the issuer itself withdraws is not
    known to us (it only stops calling): the operator removes its webhooks
    (``meldingstjener webhooks remove``). A webhook registered before the issuer was recorded
    (migration 0015) is fed while any issuer is configured."""
    jwt = WebhookRow.credential == Credential.JWT
    if jwt_issuer is None:
        return (*_LIVE, ~jwt)
    same_issuer = or_(WebhookRow.issuer.is_(None), WebhookRow.issuer == jwt_issuer)
    return (*_LIVE, or_(~jwt, same_issuer))


# The scopes that let a client hear of each event, as they let it read the same through the
# API: a received message needs "receive", a sent one "send" (message.status is of both: a
# client hears of the direction its scopes read), an alert "admin".
EVENT_SCOPES: dict[str, frozenset[str]] = {
    "message.received": frozenset({"receive"}),
    "message.status": frozenset({"send", "receive"}),
    "alert": frozenset({"admin"}),
}


def events_allowed(scopes: Iterable[str]) -> list[str]:
    """The events a client with ``scopes`` may register a webhook for."""
    held = set(scopes)
    return [event for event, needs in EVENT_SCOPES.items() if needs & held]


@dataclass(frozen=True)
class _Call:
    """What one webhook call needs, read under its claim."""

    row_id: int  # the delivery's row, where the call is recorded
    delivery_id: str  # what the receiver is told (the row's random delivery_id, never its id)
    url: str
    secret: str
    event_type: str
    body: Any


class _CallsUnderWay:
    """How many webhook calls this process has under way (the stop's end tells those it cuts)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0

    def __enter__(self) -> None:
        with self._lock:
            self._count += 1

    def __exit__(self, *_: object) -> None:
        with self._lock:
            self._count -= 1

    def count(self) -> int:
        with self._lock:
            return self._count


_UNDER_WAY = _CallsUnderWay()


def calls_under_way() -> int:
    """How many webhook calls this process has under way now."""
    return _UNDER_WAY.count()


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature a receiver recomputes to know the call is ours and unaltered: keyed with
    the secret's UTF-8 text (not the bytes its base64url would stand for), over the timestamp
    header as sent, ".", and the body. docs/API.md gives a receiver this recipe; keep both
    (and the test that verifies a call by it) as one."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class WebhookDispatcher:
    def __init__(
        self,
        ctx: EngineContext,
        settings: WebhookSettings,
        http: httpx.Client | None = None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        jwt_issuer: str | None = None,
    ) -> None:
        self.ctx = ctx
        self.settings = settings
        # the issuer whose tokens the API takes now ([api] jwt_issuer): see _live
        self.jwt_issuer = jwt_issuer
        self._monotonic = monotonic
        self._gaps_seen: dict[int, float] = {}  # a missing event id -> when first seen missing
        self._purged_at: float | None = None  # on self._monotonic
        # the rounds' outages, told once each: a round that works ends one (run)
        self._rounds = RoundFailures(log, "webhook round")
        # a client given (tests) makes its own checks of where it connects
        self.http = http or webhook_client(settings.timeout_seconds, TargetPolicy.of(settings))
        self._stop = threading.Event()  # the serving loop's (run): set, no call is begun

    def _live(self) -> tuple[ColumnElement[bool], ...]:
        return live(self.jwt_issuer)

    def run(self, stop: threading.Event) -> None:
        self._stop = stop
        while not stop.is_set():
            stop.wait(self.turn())

    def turn(self) -> float:
        """One round of the serving loop; the pause before the next. A round the store refuses
        (its database full, ``failing_jobs.refused_by_store``) leaves what it had not recorded
        as it was (see ``_record``) and is tried again ``STORE_PAUSE`` later, as the jobs are:
        no traceback, the outage told by the store-failing period."""
        try:
            self.run_once()
        except Exception as exc:  # keep the loop alive; the next round tries again
            if refused_by_store(self.ctx, exc, "the webhook deliveries"):
                return max(self.settings.poll_interval_seconds, STORE_PAUSE.total_seconds())
            self._rounds.failed(exc)  # an outage told once, not each round
        else:
            self._rounds.worked()  # the outage is over: the next one is told again
        return self.settings.poll_interval_seconds

    def run_once(self) -> int:
        """One round: news into deliveries, the calls due, and (hourly) the purge of finished
        deliveries; return how many calls were made."""
        self.collect()
        calls = self.deliver_due()
        now = self._monotonic()
        if self._purged_at is None or now - self._purged_at >= PURGE_EVERY_SECONDS:
            # marked before it runs: a purge that fails (a locked table, a full disk) is tried
            # again in an hour, not every round with a traceback each time
            self._purged_at = now
            self.purge()
        return calls

    # -- news -> deliveries ---------------------------------------------------------------------

    def collect(self) -> int:
        """Turn new log events and alerts into deliveries; return how many were made."""
        made = 0
        with self.ctx.store.unit_of_work() as uow:
            if self.ctx.store.database.is_postgresql and not uow.session.scalar(
                text("SELECT pg_try_advisory_xact_lock(:space, :key)"),
                {"space": COLLECT_LOCK[0], "key": COLLECT_LOCK[1]},
            ):
                # Another process is collecting: it makes the same deliveries (SQLite needs
                # no lock: each unit of work holds the database's one writer).
                return 0
            hooks = list(uow.session.scalars(select(WebhookRow).where(*self._live())))
            cursor = int(uow.state.get(EVENT_CURSOR) or 0)
            if not hooks:
                # Nobody listens: keep the cursor at the newest event, so that a webhook added
                # later starts from then, without reading every event of a busy server.
                last = uow.session.scalar(select(func.max(EventRow.id))) or 0
                if last > cursor:
                    uow.state.set(EVENT_CURSOR, str(last))
                self._collect_alerts(uow, hooks)
                uow.commit()
                return 0
            # Settled first, then read: on PostgreSQL each statement sees what has committed
            # by its start, so an event committed between the two would be counted settled
            # by a later look and never read by an earlier one (skipped for good). Read after,
            # everything settled is seen; what commits meanwhile lies beyond it.
            settled = self._settled_up_to(uow, cursor)
            rows = uow.session.execute(
                select(EventRow, MessageRow)
                .join(MessageRow, EventRow.message_id == MessageRow.id)
                .where(EventRow.id > cursor, EventRow.kind == EventKind.STATUS)
                .order_by(EventRow.id)
                .limit(EVENT_BATCH)
            ).all()
            for event, message in rows:
                # idempotent: an event seen again (behind a gap) finds its delivery made
                made += self._fan_out(uow, hooks, *_message_news(uow, event, message))
            if len(rows) == EVENT_BATCH:  # more news than one round takes: continue after it
                settled = min(settled, rows[-1][0].id)
            if settled != cursor:
                uow.state.set(EVENT_CURSOR, str(settled))
            made += self._collect_alerts(uow, hooks)
            uow.commit()
        return made

    def _settled_up_to(self, uow: UnitOfWork, cursor: int) -> int:
        """The highest event id up to which every id is committed (or given up as never coming).

        On PostgreSQL ids are taken when a row is inserted, not when its transaction commits, so
        id 11 can become visible after id 12. The cursor waits at such a gap; the events beyond
        it are looked at again each round (their deliveries already exist). A sequence also
        skips ids for good (a rolled-back insert): a gap still open after
        ``EVENT_GAP_SECONDS`` is taken to be one.
        """
        ids = uow.session.scalars(
            select(EventRow.id).where(EventRow.id > cursor).order_by(EventRow.id).limit(5000)
        ).all()
        now = self._monotonic()
        settled = cursor
        for event_id in ids:
            while settled + 1 < event_id:  # ids missing before this one
                missing = settled + 1
                first_seen = self._gaps_seen.setdefault(missing, now)
                if now - first_seen < EVENT_GAP_SECONDS:
                    self._forget_gaps_below(settled)
                    return settled
                settled = missing  # waited long enough: never committed
            settled = event_id
        self._forget_gaps_below(settled)
        return settled

    def _forget_gaps_below(self, settled: int) -> None:
        for event_id in [gap for gap in self._gaps_seen if gap <= settled]:
            del self._gaps_seen[event_id]

    def _collect_alerts(self, uow: UnitOfWork, hooks: list[WebhookRow]) -> int:
        """Alerts raised, counted, acknowledged or resolved since the cursor (``changed_at``):
        a pager fed by webhooks closes what was resolved. A lasting state counted again by
        :func:`~meldingstjener.engine.alerts.keep_alert` keeps its ``changed_at``: not told."""
        since = uow.state.get(ALERT_CURSOR)
        changed = AlertRow.changed_at
        query = select(AlertRow).order_by(changed, AlertRow.id).limit(500)
        late: list[AlertRow] = []
        if since:
            cursor = datetime.fromisoformat(since)
            query = query.where(changed > cursor)
            if hooks and self.ctx.clock() - cursor < 2 * ALERT_LOOKBACK:
                # An alert is stamped with its raiser's clock before its transaction commits:
                # one that commits late, or comes from a host whose clock is a few seconds
                # behind (or that shares its time with the last of a full batch), has a time
                # the cursor passed already. The minute before the cursor is looked at again,
                # for two minutes after it (then such an alert has long committed); a delivery
                # is made once per alert, change and state (its key), so never twice.
                late = list(
                    uow.session.scalars(
                        select(AlertRow)
                        .where(changed > cursor - ALERT_LOOKBACK, changed <= cursor)
                        .order_by(changed, AlertRow.id)
                        .limit(5000)
                    )
                )
        alerts = list(uow.session.scalars(query))
        made = 0
        for alert in late + alerts:
            state = _alert_state(alert)
            body = {
                "event": "alert",
                "alertId": alert.id,
                "kind": alert.kind,
                "severity": alert.severity,
                "state": state,
                "messageId": alert.message_id,
                "partnerHerId": alert.partner_her_id,
                "summary": alert.summary,
                "count": alert.count,
                "lastSeen": alert.last_seen.isoformat(),
                "acknowledgedBy": alert.acknowledged_by,
                "resolvedAt": alert.resolved_at.isoformat() if alert.resolved_at else None,
                # resolved by hand: by whom, and whether with a note; not the note itself, an
                # operator's free text (masked of identity numbers only), which a webhook target
                # outside the server need not see: the admin client reads it by GET /api/alerts
                "resolvedBy": alert.resolved_by,
                "hasResolutionNote": alert.resolution_note is not None,
                "at": (alert.changed_at or alert.last_seen).isoformat(),
            }
            # one delivery per change told (changed_at), not per count: a lasting state kept by
            # engine.alerts.keep_alert is counted without being told, and its count may have
            # moved when the minute before the cursor is looked at again
            told_at = (alert.changed_at or alert.last_seen).isoformat()
            key = f"alert:{alert.id}:{state}:{told_at}"
            made += self._fan_out(uow, hooks, "alert", key, body, None, "admin")
        if alerts:
            last = alerts[-1]
            uow.state.set(ALERT_CURSOR, (last.changed_at or last.last_seen).isoformat())
        return made

    def _fan_out(
        self,
        uow: UnitOfWork,
        hooks: list[WebhookRow],
        event_type: str,
        key: str,
        body: dict[str, Any],
        her_id: str | None,
        scope: str,
    ) -> int:
        """Make the delivery of one piece of news (``scope``: the scope that reads it) to each
        webhook whose client may read it."""
        made = 0
        for hook in hooks:
            if event_type not in hook.events:
                continue
            if her_id is not None and her_id not in hook.her_ids:
                continue  # a client hears only about its own HER-ids
            if hook.scopes is not None and scope not in hook.scopes:
                continue  # nor of what its scopes do not let it read (one registered
                # before they were checked, migration 0015, may have asked for it)
            exists = uow.session.scalars(
                select(WebhookDeliveryRow.id).where(
                    WebhookDeliveryRow.webhook_id == hook.id, WebhookDeliveryRow.event_key == key
                )
            ).first()
            if exists is None:
                uow.session.add(
                    WebhookDeliveryRow(
                        webhook_id=hook.id,
                        event_key=key,
                        event_type=event_type,
                        body=body,
                        state="pending",
                        attempts=0,
                        due_at=self.ctx.clock(),
                    )
                )
                made += 1
        return made

    # -- finished deliveries -> gone --------------------------------------------------------------

    def purge(self) -> int:
        """Delete the deliveries sent or given up more than ``delivery_retention_days`` ago;
        return how many. A pending one is never deleted, however old.

        A row per webhook and event was kept for ever. Its time is its ``due_at``: the claim of
        its last call moved it to a few time-outs after that call, a failure to its next try
        (at most ``max_retry_seconds`` later). A delivery gone can never be made again: the
        event cursor has long passed its event, and alerts are looked at again for two minutes
        only (the retention is a day at least). Deleted in batches, each its own transaction,
        so that the table is not locked for long."""
        cutoff = self.ctx.clock() - timedelta(days=self.settings.delivery_retention_days)
        finished = select(WebhookDeliveryRow.id).where(
            WebhookDeliveryRow.state.in_(("sent", "failed")), WebhookDeliveryRow.due_at < cutoff
        )
        # The batch's ids are chosen by the database itself (a subquery, not bound ids: 5000
        # bound parameters are more than an SQLite before 3.32 allows, 999).
        batch = delete(WebhookDeliveryRow).where(
            WebhookDeliveryRow.id.in_(finished.limit(PURGE_BATCH).scalar_subquery())
        )
        purged = 0
        while True:
            with self.ctx.store.unit_of_work() as uow:
                deleted = int(uow.session.execute(batch).rowcount)  # type: ignore[attr-defined]
                uow.commit()
            purged += deleted
            if deleted < PURGE_BATCH:
                break
        if purged:
            log.info("purged %d finished webhook deliveries", purged)
        return purged

    # -- deliveries -> HTTP ---------------------------------------------------------------------

    def deliver_due(self) -> int:
        """Call the webhooks with what is due; return how many calls were made.

        Each webhook with deliveries due is served by one task (:meth:`_deliver_to`), up to
        ``parallel_webhooks`` of them at once: a receiver that answers slowly holds its own
        webhook's calls, not every client's. The round ends when every task has; a task ends
        at a failed call or when its webhook had its share of the round (``timeout_seconds``),
        so the round is never much longer than a call's deadline per ``parallel_webhooks``
        slow webhooks. The clients take turns (:func:`_by_turns`): one client's many slow
        webhooks do not hold up another client's."""
        now = self.ctx.clock()
        with self.ctx.store.unit_of_work() as uow:
            # one row per webhook, the one waiting longest first: a webhook owed thousands of
            # calls keeps its turn, not every place of the round
            due = uow.session.execute(
                select(WebhookDeliveryRow.webhook_id, WebhookRow.client_name, WebhookRow.credential)
                .join(WebhookRow, WebhookDeliveryRow.webhook_id == WebhookRow.id)
                .where(*self._due(now))
                .group_by(
                    WebhookDeliveryRow.webhook_id, WebhookRow.client_name, WebhookRow.credential
                )
                .order_by(func.min(WebhookDeliveryRow.due_at), WebhookDeliveryRow.webhook_id)
            ).all()
        hooks = _by_turns((hook_id, (client, credential)) for hook_id, client, credential in due)
        hooks = hooks[:HOOKS_PER_ROUND]
        if len(hooks) <= 1:
            return sum(self._deliver_to(hook_id, now) for hook_id in hooks)
        return self._in_parallel(hooks, now, min(self.settings.parallel_webhooks, len(hooks)))

    def _in_parallel(self, hooks: list[int], now: datetime, workers: int) -> int:
        """Serve ``hooks`` in ``workers`` threads, each taking the next webhook as it is done
        with one; return how many calls were made, or raise what one of them raised (the
        others then take no further webhook).

        Daemon threads, not concurrent.futures' pool, whose threads the interpreter waits for
        as it ends: a call may take ``CALL_TIMEOUTS`` x ``timeout_seconds`` (20 s by default),
        which held the end of a stopping ``serve`` past a service manager's grace period. A
        call under way when the process ends is cut as by a crash: its delivery is made again,
        under the same delivery id, once its claim runs out."""
        pending: queue.SimpleQueue[int] = queue.SimpleQueue()
        for hook_id in hooks:
            pending.put(hook_id)
        made: list[int] = []
        failed: list[BaseException] = []

        def serve() -> None:
            while not failed:
                try:
                    hook_id = pending.get_nowait()
                except queue.Empty:
                    return
                try:
                    made.append(self._deliver_to(hook_id, now))
                except BaseException as exc:  # the round's, as if it had made the call itself
                    failed.append(exc)

        threads = [
            threading.Thread(target=serve, name=f"{CALL_THREADS}-{number}", daemon=True)
            for number in range(workers)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if failed:
            raise failed[0]
        return sum(made)

    def _due(self, now: datetime) -> tuple[ColumnElement[bool], ...]:
        """Deliveries due now, of live webhooks that are not paused."""
        return (
            WebhookDeliveryRow.state == "pending",
            WebhookDeliveryRow.due_at <= now,
            *self._live(),
            or_(WebhookRow.paused_until.is_(None), WebhookRow.paused_until <= now),
        )

    def _deliver_to(self, hook_id: int, now: datetime) -> int:
        """Make one webhook's due calls, one after another, oldest first; return how many were
        made. A webhook whose call fails is not called again this round, and pauses (see
        ``_record``): a receiver that is down is asked once per wait, not once per delivery owed
        to it. One that answers, but slowly, gets ``timeout_seconds`` of the round (and the call
        under way at its end): the rest of its calls wait for the next round, after the other
        webhooks have had theirs."""
        started = self._monotonic()
        with self.ctx.store.unit_of_work() as uow:
            due = list(
                uow.session.scalars(
                    select(WebhookDeliveryRow.id)
                    .join(WebhookRow, WebhookDeliveryRow.webhook_id == WebhookRow.id)
                    .where(WebhookDeliveryRow.webhook_id == hook_id, *self._due(now))
                    .order_by(WebhookDeliveryRow.due_at, WebhookDeliveryRow.id)
                    .limit(CALLS_PER_HOOK)
                )
            )
        calls = 0
        for row_id in due:
            if self._stop.is_set():
                break  # the server stops: the rest waits for a dispatcher that runs on
            if calls and self._monotonic() - started >= self.settings.timeout_seconds:
                break  # its share of the round is spent
            call = self._claim(row_id, hook_id)
            if call is None:
                continue  # another process has it, or the webhook paused meanwhile
            calls += 1
            if not self._deliver(call):
                break
        return calls

    def _claim(self, row_id: int, hook_id: int) -> _Call | None:
        """Take one delivery for this process's call, or None when it is not to be made.

        Every ``serve`` runs a dispatcher. A delivery is claimed right before its call by moving
        its due time past the longest the call may take: another process does not send it too,
        and one that dies in the call leaves it to be sent again then. A webhook that failed
        last is probed by one process with one delivery: its pause moves likewise, so a
        receiver that is down is asked once per wait, not once per process."""
        now = self.ctx.clock()
        until = now + timedelta(seconds=CLAIM_CALLS * self.settings.timeout_seconds + 30)
        with self.ctx.store.unit_of_work() as uow:
            # the webhook's row first, then the delivery's, as _record and _disable lock them
            # (the other order let two processes wait for each other)
            hook = uow.session.scalars(
                select(WebhookRow)
                .where(WebhookRow.id == hook_id, *self._live())
                .with_for_update(of=WebhookRow)
            ).first()
            if hook is None or (hook.paused_until is not None and hook.paused_until > now):
                return None
            taken = uow.session.execute(
                update(WebhookDeliveryRow)
                .where(
                    WebhookDeliveryRow.id == row_id,
                    WebhookDeliveryRow.state == "pending",
                    WebhookDeliveryRow.due_at <= now,
                )
                .values(due_at=until)
            )
            if taken.rowcount != 1:  # type: ignore[attr-defined]
                return None  # another process has it
            if hook.consecutive_failures:
                hook.paused_until = until
            delivery = uow.session.get(WebhookDeliveryRow, row_id)
            assert delivery is not None
            call = _Call(
                row_id,
                delivery.delivery_id,
                hook.url,
                hook.secret,
                delivery.event_type,
                delivery.body,
            )
            uow.commit()
        return call

    def _deliver(self, call: _Call) -> bool:
        data = json.dumps({**call.body, "deliveryId": call.delivery_id}, sort_keys=True).encode()
        # each call, a retry too, is signed at its own time: a receiver may refuse old ones
        timestamp = self.ctx.clock().isoformat()
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(call.secret, timestamp, data),
            "X-Meldingstjener-Event": call.event_type,
            DELIVERY_HEADER: call.delivery_id,
        }
        error: str | None = None
        deadline = time.monotonic() + CALL_TIMEOUTS * self.settings.timeout_seconds
        try:
            with (
                _UNDER_WAY,
                call_deadline(deadline),
                self.http.stream("POST", call.url, content=data, headers=headers) as response,
            ):
                if not 200 <= response.status_code < 300:
                    error = f"HTTP {response.status_code}"
                _read_answer(response, deadline, call.delivery_id)
        except TargetRefused as refused:
            error = f"{TARGET_REFUSED}: {refused}"
        except httpx.TimeoutException as exc:
            error = TOO_SLOW if time.monotonic() >= deadline else type(exc).__name__
        except Exception as exc:
            # Whatever a call raises is that delivery's failure, recorded and retried like any:
            # a URL httpx cannot use raises InvalidURL, which is no HTTPError, and once stopped
            # every round before any other delivery was made.
            error = f"{type(exc).__name__}"
        self._record(call.row_id, error)
        return error is None

    def _record(self, row_id: int, error: str | None) -> None:
        """Record a call's outcome. When the store refuses (its database full) nothing is
        recorded, and nothing counted against the receiver: the delivery stays claimed as
        ``_claim`` left it, and is made again once its claim has run out and the store writes,
        under the same delivery id, by which a receiver that took the first call knows the
        repeat."""
        now = self.ctx.clock()
        with self.ctx.store.unit_of_work() as uow:
            delivery = uow.session.get(WebhookDeliveryRow, row_id)
            if delivery is None:
                return
            # locked: another process may record a call to the same webhook at the same time
            hook = uow.session.get(WebhookRow, delivery.webhook_id, with_for_update=True)
            assert hook is not None
            delivery.attempts += 1
            if error is None:
                delivery.state = "sent"
                delivery.last_error = None
                hook.consecutive_failures = 0
                hook.paused_until = None
                uow.commit()
                return
            delivery.last_error = error
            hook.consecutive_failures += 1
            # The webhook pauses as a whole, for a wait that doubles with its failures in a
            # row: a receiver that restarts for a minute meets a try or two, not a try per
            # delivery (which switched it off for good within one round). The delivery's own
            # next try doubles with its own attempts: one the receiver always refuses, between
            # others it takes, is asked ever more rarely, not every first wait for ever.
            hook.paused_until = now + self._wait(hook.consecutive_failures)
            delivery.due_at = now + self._wait(delivery.attempts)
            disabled = hook.consecutive_failures >= self.settings.disable_after_failures
            if disabled:
                self._disable(uow, hook, error, now)
            uow.commit()
        if disabled:  # said once it is so: a commit the store refused disabled nothing
            log.warning("webhook %s disabled", delivery.webhook_id)

    def _wait(self, failures: int) -> timedelta:
        # the exponent capped: a delivery refused for months counts past 2**1024, which no
        # float holds (the OverflowError stopped every round at that delivery)
        doubling = 2 ** min(max(failures - 1, 0), 62)
        return timedelta(
            seconds=min(
                self.settings.first_retry_seconds * doubling, self.settings.max_retry_seconds
            )
        )

    def _disable(self, uow: UnitOfWork, hook: WebhookRow, error: str, now: datetime) -> None:
        hook.active = False
        hook.disabled_at = now
        for pending in uow.session.scalars(
            select(WebhookDeliveryRow).where(
                WebhookDeliveryRow.webhook_id == hook.id, WebhookDeliveryRow.state == "pending"
            )
        ):
            pending.state = "failed"
        uow.alerts.raise_alert(
            WEBHOOK_DISABLED,
            severity=SEVERITY[AlertKind.WEBHOOK_DISABLED],
            dedup_key=f"{WEBHOOK_DISABLED}:{hook.id}",
            summary=f"webhook {hook.id} of client {hook.client_name} disabled after "
            f"{hook.consecutive_failures} failed deliveries in a row (last: {error}); "
            "fix the receiving URL and register the webhook again",
            at=now,
        )


def _by_turns(hooks: Iterable[tuple[int, tuple[str, str]]]) -> list[int]:
    """The webhook ids in the order the round takes them: each client (name and credential)'s
    first one, then each one's second, and so on, a client's in the order given (the one
    waiting longest first), the clients in the order of their first. Taken oldest first
    alone, the old deliveries of one client's many webhooks at a receiver that answers just
    inside the time-out took every place of the pool, round after round, while every other
    client's webhook waited (N slow webhooks: N / parallel_webhooks calls' time)."""
    queues: dict[tuple[str, str], list[int]] = {}
    for hook_id, client in hooks:
        queues.setdefault(client, []).append(hook_id)
    turns: list[int] = []
    for turn in range(max((len(q) for q in queues.values()), default=0)):
        turns.extend(q[turn] for q in queues.values() if turn < len(q))
    return turns


def hold_registrations_of(uow: UnitOfWork, client_name: str, credential: str) -> None:
    """Make another registration of the client (its name and credential) wait until ``uow``
    ends, so that what it counts of the client's webhooks stays true until it adds one: two
    registrations at once each counted one below ``max_per_client`` and both were added.

    SQLite needs nothing: a unit of work holds the database's one writer from its first
    statement (BEGIN IMMEDIATE). PostgreSQL takes an advisory lock on the client, not a row
    lock: a JWT client has no row to lock. Two clients whose keys meet (32 bits) wait for each
    other's registrations, no more."""
    if uow.database.is_postgresql:
        uow.session.execute(
            text("SELECT pg_advisory_xact_lock(:space, :key)"),
            {"space": REGISTER_LOCK_SPACE, "key": name_key(f"{credential}:{client_name}")},
        )


def end_webhooks_of(uow: UnitOfWork, client_name: str, *, at: datetime) -> int:
    """Switch off every webhook of API-key client ``client_name`` and drop what is owed to them
    (a client revoked: its URL would go on hearing of every message, and only the client itself
    may list or delete its webhooks). Those a JWT client of the same name registered are not
    its, and stay. Returns how many were switched off."""
    hooks = list(
        uow.session.scalars(
            select(WebhookRow).where(
                WebhookRow.client_name == client_name,
                WebhookRow.credential == Credential.API_KEY,
                WebhookRow.active,
            )
        )
    )
    for hook in hooks:
        hook.active = False
        hook.disabled_at = at
    if hooks:
        uow.session.execute(
            update(WebhookDeliveryRow)
            .where(
                WebhookDeliveryRow.webhook_id.in_([hook.id for hook in hooks]),
                WebhookDeliveryRow.state == "pending",
            )
            .values(state="failed")
        )
    return len(hooks)


def _read_answer(response: httpx.Response, deadline: float, delivery_id: str) -> None:
    """Read the receiver's answer, at most ``ANSWER_BYTES`` of it by ``deadline``: only so
    that its connection may serve the next call. Its status has said what became of the call;
    a longer or slower answer is cut off (its connection closed), whatever it holds."""
    try:
        read_capped(response, ANSWER_BYTES, deadline=deadline)
    except (BodyTooLarge, BodyTooSlow, httpx.TransportError) as exc:
        log.info("webhook delivery %s: answer cut off (%s)", delivery_id, type(exc).__name__)


def _alert_state(alert: AlertRow) -> str:
    if alert.resolved_at is not None:
        return "resolved"
    return "acknowledged" if alert.acknowledged_at is not None else "open"


def _message_news(
    uow: UnitOfWork, event: EventRow, message: MessageRow
) -> tuple[str, str, dict[str, Any], str | None, str]:
    """(event type, dedup key, body, the own HER-id it concerns, the scope that reads it) for
    one status event. A copy an operator sent again (``resend``) names the message first sent
    (``copyOf``), the id its EPJ was given, and every body the MsgHead MsgId
    (``businessDocumentId``, as GetMessage names it), by which the EPJ knows its document."""
    inbound = message.direction == Direction.INBOUND.value
    own = message.to_her_id if inbound else message.from_her_id
    event_type = (
        "message.received" if inbound and event.to_status == "acknowledged" else ("message.status")
    )
    body = {
        "event": event_type,
        "messageId": message.id,
        "direction": message.direction,
        "status": event.to_status,
        "previousStatus": event.from_status,
        "messageType": message.msg_type,
        "senderHerId": message.from_her_id,
        "receiverHerId": message.to_her_id,
        "businessDocumentId": message.msg_id,
        "copyOf": first_original(uow, message),
        "at": event.at.isoformat(),
    }
    return event_type, f"event:{event.id}", body, own, "receive" if inbound else "send"
