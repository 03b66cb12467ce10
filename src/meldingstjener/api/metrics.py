"""``GET /metrics``: the server's figures in the Prometheus text format, for an operator's
monitoring to scrape.

The figures are the store's (:mod:`meldingstjener.store.figures`), read at each scrape: every
``serve`` on one database answers the same, so Prometheus may scrape any one of them, or each,
or a load balancer in front of them. No counters of a process are kept: behind a balancer each
scrape meets another process, and counters that reset at every restart and differ from process
to process would tell nothing true; what happened to the messages is in the store already
(``/api/log``, the alerts). The certificates' expiry is this process's own keys (read from its
configuration, as every process on the store is configured alike).

The names follow Prometheus' conventions: base units, and a point in time as a Unix time in
seconds (``_timestamp_seconds``), never as an age by this server's clock: Prometheus takes the
age with its own (``time() - x``), so that a scrape of any ``serve`` answers the same and the
age a rule sees is that of its evaluation, not of the last scrape. A point in time is left out
when there is nothing to date (no message of that status, no job of that kind due): a 0 would
be 1970, not "none".

The jobs waiting are counted up to a bound per kind (``store/figures.py``'s COUNTED_JOBS,
1,000), so that a scrape of a store with a backlog of hundreds of thousands costs what the
bound does: a kind whose waiting is at the bound has at least that many (the time the one due
longest was due is exact, and tells the backlog's age). Those running, a few per worker, are
counted all.

The answer names no patient and no partner: counts by direction and status, by job kind, by
alert kind and severity, and times. It still tells how busy the server is and how it
fares, so it needs an API client with the ``metrics`` scope (or ``admin``); Prometheus sends the
key as ``Authorization: Bearer <key>`` (``authorization`` in its scrape config). Without a
credential it is 401, as every other authenticated route; with a client of neither scope 403,
audited.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
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
from meldingstjener.store.figures import (
    COUNTED_JOBS,
    LATE_AFTER,
    Figures,
    OpenAlerts,
    read_figures,
)
from meldingstjener.store.tables import UNSETTLED_STATUSES

METRICS_PATH = "/metrics"
# the scopes that may read the figures: the narrow one for a monitoring system, and the operator's
METRICS_SCOPES = frozenset({"metrics", "admin"})
# The text format every Prometheus reads (the names here need none of 1.0.0's escaping).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_PREFIX = "meldingstjener"
# The statuses under way whose oldest is not dated. A received message the EPJ has taken
# (``delivered``) waits for its AppRec, but the server cannot tell one the EPJ will answer from
# one it never will (a type it does not answer, or answers another way): such a message stays
# ``delivered`` for good, so the age of the oldest would only climb and alert on nothing. The
# count is still given: it shows the deliveries unanswered, those never to be answered among
# them. (``apprec-missing``, per message and agreement, is the alert for an AppRec owed.)
NO_OLDEST = frozenset({("in", "delivered")})
# Every count is given for every status under way, job kind and alert kind (at its severity),
# 0 when there is none, so that a graph or a rate() has no gaps and a rule need not tell "none"
# from "not scraped". (Points in time are given only when there is one: see the docstring.)
JOB_KINDS = tuple(HANDLERS)
# The bound of the jobs waiting, told with their counts (see store/figures.py's COUNTED_JOBS)
_COUNTED = (
    f"counted among the {COUNTED_JOBS} of the kind waiting longest: at {COUNTED_JOBS}, at "
    "least that many"
)
ALERTS = tuple((kind.value, SEVERITY[kind]) for kind in AlertKind)


def _timestamp(moment: datetime) -> float:
    """``moment`` as Prometheus dates things: Unix time in seconds."""
    return moment.timestamp()


def families(figures: Figures, certificates: dict[str, x509.Certificate]) -> list[Metric]:
    """The metric families of ``figures``, and the end of validity of ``certificates`` (by
    their use)."""
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
        f"{_PREFIX}_messages_oldest_created_timestamp_seconds",
        "When the oldest message of each direction and status under way was made (submitted or "
        "received), Unix time; absent when there is none, and for received messages delivered",
        labels=["direction", "status"],
    )
    found = {(m.direction, m.status): m for m in figures.messages}
    for direction, statuses in UNSETTLED_STATUSES.items():
        for status in statuses:
            message = found.get((direction, status))
            under_way.add_metric([direction, status], message.count if message else 0)
            if message and (direction, status) not in NO_OLDEST:
                oldest.add_metric([direction, status], _timestamp(message.oldest))

    late_seconds = int(LATE_AFTER.total_seconds())
    waiting = GaugeMetricFamily(
        f"{_PREFIX}_jobs_waiting",
        "Jobs due now that no worker holds (sends, signals, retries, timed checks), by kind; "
        + _COUNTED,
        labels=["kind"],
    )
    late = GaugeMetricFamily(
        f"{_PREFIX}_jobs_late",
        f"Jobs waiting (due, held by no worker) that were due more than {late_seconds} s ago, "
        "by kind; " + _COUNTED,
        labels=["kind"],
    )
    running = GaugeMetricFamily(
        f"{_PREFIX}_jobs_running",
        "Jobs that a worker holds now, by kind (all of them)",
        labels=["kind"],
    )
    oldest_due = GaugeMetricFamily(
        f"{_PREFIX}_jobs_oldest_due_timestamp_seconds",
        "When the job due longest of each kind (waiting or running) was due, Unix time; absent "
        "when none is due",
        labels=["kind"],
    )
    # every kind a worker runs, 0 when none is due (a kind of the store no worker knows too)
    found_jobs = {jobs.kind: jobs for jobs in figures.jobs}
    for kind in dict.fromkeys([*JOB_KINDS, *found_jobs]):
        jobs = found_jobs.get(kind)
        waiting.add_metric([kind], jobs.waiting if jobs else 0)
        late.add_metric([kind], jobs.late if jobs else 0)
        running.add_metric([kind], jobs.running if jobs else 0)
        if jobs:
            oldest_due.add_metric([kind], _timestamp(jobs.oldest_due))

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

    not_after = GaugeMetricFamily(
        f"{_PREFIX}_certificate_not_after_timestamp_seconds",
        "When our own certificate of each use expires (its notAfter), Unix time",
        labels=["certificate"],
    )
    for use, certificate in certificates.items():
        not_after.add_metric([use], _timestamp(certificate.not_valid_after_utc))

    return [
        info,
        under_way,
        oldest,
        waiting,
        late,
        running,
        oldest_due,
        alerts,
        unacknowledged,
        not_after,
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
    # a connection for reads alone: on SQLite it waits behind no unit of work's write lock
    with ctx.store.database.reading() as connection:
        figures = read_figures(connection, ctx.clock())
    certificates = {
        "signing": ctx.keys.signing_certificate,
        "encryption": ctx.keys.encryption_certificate,
    }
    return render(families(figures, certificates))


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
            401: {"description": "No or invalid credentials"},
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
