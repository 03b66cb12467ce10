"""``GET /metrics``: the server's figures in the Prometheus text format, for an operator's
monitoring to scrape.

The figures are the store's (:mod:`meldingstjener.store.figures`), read at each scrape: every
``serve`` on one database answers the same, so Prometheus may scrape any one of them, or each,
or a load balancer in front of them. No counters of a process are kept: behind a balancer each
scrape meets another process, and counters that reset at every restart and differ from process
to process would tell nothing true; what happened to the messages is in the store already
(``/api/log``, the alerts). The certificates' expiry is this process's own keys (read from its
configuration, as every process on the store is configured alike).

The answer names no patient and no partner: counts by direction and status, by job kind, by
alert kind and severity, and ages in seconds. It still tells how busy the server is and how it
fares, so it needs an API client with the ``metrics`` scope (or ``admin``); Prometheus sends the
key as ``Authorization: Bearer <key>`` (``authorization`` in its scrape config). Without a
credential it is 401, as every other authenticated route; with a client of neither scope 403,
audited.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import replace
from datetime import datetime

from cryptography import x509
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from prometheus_client import generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from meldingstjener import __version__
from meldingstjener.api.auth import Authenticator, forbid, principal_of
from meldingstjener.engine.alerts import SEVERITY, AlertKind
from meldingstjener.engine.context import EngineContext
from meldingstjener.engine.worker import HANDLERS
from meldingstjener.store.figures import LATE_AFTER, DueJobs, Figures, OpenAlerts, read_figures
from meldingstjener.store.tables import UNSETTLED_STATUSES

METRICS_PATH = "/metrics"
# the scopes that may read the figures: the narrow one for a monitoring system, and the operator's
METRICS_SCOPES = frozenset({"metrics", "admin"})
# The text format every Prometheus reads (the names here need none of 1.0.0's escaping).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_PREFIX = "meldingstjener"
# The statuses under way whose oldest age is not given. A received message the EPJ has taken
# (``delivered``) waits for its AppRec, but the server cannot tell one the EPJ will answer from
# one it never will (a type it does not answer, or answers another way): such a message stays
# ``delivered`` for good, so the oldest age only ever climbed and could alert on nothing. The
# count is still given: it shows the deliveries unanswered, those never to be answered among
# them. (``apprec-missing``, per message and agreement, is the alert for an AppRec owed.)
NO_OLDEST = frozenset({("in", "delivered")})
# Every job kind and every alert kind (at its severity) is given, 0 when there is none, so that
# a graph or a rate() has no gaps and a rule need not tell "none" from "not scraped".
JOB_KINDS = tuple(HANDLERS)
ALERTS = tuple((kind.value, SEVERITY[kind]) for kind in AlertKind)


def _seconds_since(then: datetime, now: datetime) -> float:
    # never below 0: a message made by a process whose clock runs ahead is not from the future
    return max(0.0, (now - then).total_seconds())


def families(
    figures: Figures, now: datetime, certificates: dict[str, x509.Certificate]
) -> list[Metric]:
    """The metric families of ``figures`` at ``now``, and the seconds left of ``certificates``
    (by their use). Every status under way, job kind and alert kind is given, 0 when there is
    none, so that a rule or a graph need not tell "none" from "not scraped"."""
    info = GaugeMetricFamily(
        f"{_PREFIX}_build_info", "The server's version (always 1)", labels=["version"]
    )
    info.add_metric([__version__], 1)

    under_way = GaugeMetricFamily(
        f"{_PREFIX}_messages_under_way",
        "Messages not settled yet, by direction and status (sending, waiting for the "
        "partner's Acknowledgment, being retried; received and not yet taken or answered by "
        "the EPJ)",
        labels=["direction", "status"],
    )
    oldest = GaugeMetricFamily(
        f"{_PREFIX}_messages_oldest_age_seconds",
        "Seconds since the oldest message of each direction and status under way was made "
        "(submitted or received); 0 when there is none; none for received messages delivered",
        labels=["direction", "status"],
    )
    found = {(m.direction, m.status): m for m in figures.messages}
    for direction, statuses in UNSETTLED_STATUSES.items():
        for status in statuses:
            message = found.get((direction, status))
            under_way.add_metric([direction, status], message.count if message else 0)
            if (direction, status) in NO_OLDEST:
                continue
            age = _seconds_since(message.oldest, now) if message else 0.0
            oldest.add_metric([direction, status], age)

    late_seconds = int(LATE_AFTER.total_seconds())
    due = GaugeMetricFamily(
        f"{_PREFIX}_jobs_due",
        "Jobs due now and free for a worker (sends, signals, retries, timed checks), by kind",
        labels=["kind"],
    )
    late = GaugeMetricFamily(
        f"{_PREFIX}_jobs_late",
        f"Jobs due more than {late_seconds} s ago that no worker has taken, by kind",
        labels=["kind"],
    )
    running = GaugeMetricFamily(
        f"{_PREFIX}_jobs_running", "Jobs due that a worker holds now, by kind", labels=["kind"]
    )
    waiting = GaugeMetricFamily(
        f"{_PREFIX}_jobs_oldest_due_age_seconds",
        "Seconds since the job due longest of each kind (taken or not) was due",
        labels=["kind"],
    )
    # every kind a worker runs, 0 when none is due (a kind of the store no worker knows too)
    none_due = DueJobs("", 0, 0, 0, now)
    by_kind = {kind: replace(none_due, kind=kind) for kind in JOB_KINDS}
    by_kind.update((jobs.kind, jobs) for jobs in figures.jobs)
    for jobs in by_kind.values():
        due.add_metric([jobs.kind], jobs.free)
        late.add_metric([jobs.kind], jobs.late)
        running.add_metric([jobs.kind], jobs.running)
        waiting.add_metric([jobs.kind], _seconds_since(jobs.oldest_due, now))

    alerts = GaugeMetricFamily(
        f"{_PREFIX}_alerts_open",
        "Open alerts (avvik), by kind and severity",
        labels=["kind", "severity"],
    )
    unacknowledged = GaugeMetricFamily(
        f"{_PREFIX}_alerts_unacknowledged",
        "Open alerts nobody has acknowledged, by kind and severity",
        labels=["kind", "severity"],
    )
    # every kind at its severity, 0 when none is open (and any other pair the store holds)
    by_pair = {(kind, severity): OpenAlerts(kind, severity, 0, 0) for kind, severity in ALERTS}
    by_pair.update(((a.kind, a.severity), a) for a in figures.alerts)
    for open_alerts in by_pair.values():
        labels = [open_alerts.kind, open_alerts.severity]
        alerts.add_metric(labels, open_alerts.open)
        unacknowledged.add_metric(labels, open_alerts.unacknowledged)

    expiry = GaugeMetricFamily(
        f"{_PREFIX}_certificate_expiry_seconds",
        "Seconds until our own certificate of each use expires (negative: expired)",
        labels=["certificate"],
    )
    for use, certificate in certificates.items():
        expiry.add_metric([use], (certificate.not_valid_after_utc - now).total_seconds())

    return [
        info,
        under_way,
        oldest,
        due,
        late,
        running,
        waiting,
        alerts,
        unacknowledged,
        expiry,
    ]


class _Families(Collector):
    """Families made already, for the registry to render."""

    def __init__(self, made: Iterable[Metric]) -> None:
        self._made = list(made)

    def collect(self) -> Iterator[Metric]:
        return iter(self._made)


def render(made: Iterable[Metric]) -> bytes:
    """``made`` in the Prometheus text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(made))
    return generate_latest(registry)


def scrape(ctx: EngineContext) -> bytes:
    """What ``GET /metrics`` answers: the store's figures now, and our certificates."""
    now = ctx.clock()
    # a connection for reads alone: on SQLite it waits behind no unit of work's write lock
    with ctx.store.database.reading() as connection:
        figures = read_figures(connection, now)
    certificates = {
        "signing": ctx.keys.signing_certificate,
        "encryption": ctx.keys.encryption_certificate,
    }
    return render(families(figures, now, certificates))


def metrics_router(ctx: EngineContext, auth: Authenticator) -> APIRouter:
    router = APIRouter(tags=["Operations"])

    @router.get(
        METRICS_PATH,
        summary="The server's figures in the Prometheus text format (scope metrics or admin)",
        response_class=Response,
        responses={
            200: {
                "description": "Messages under way, jobs due, open alerts, certificates' expiry",
                "content": {CONTENT_TYPE: {"schema": {"type": "string"}}},
            },
            403: {"description": "The client has neither the 'metrics' nor the 'admin' scope"},
        },
    )
    async def metrics(request: Request) -> Response:
        who = await principal_of(auth, request)
        if not who.scopes & METRICS_SCOPES:
            detail = "the client lacks the 'metrics' scope (or 'admin')"
            await forbid(ctx.store, who, METRICS_PATH, detail)
        body = await run_in_threadpool(scrape, ctx)
        return Response(body, media_type=CONTENT_TYPE)

    return router
