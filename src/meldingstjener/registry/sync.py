"""Resumable sync of the local register copy from the address register's REST API.

First run (or ``full=True``): the export lists every HER-id and the event sequence number it
reflects; each party is fetched and upserted, a chunk at a time, each chunk committed together
with "done up to HER-id X". Afterwards only events are read: from the stored sequence number on,
each changed party is fetched and upserted, and the sequence number of the last applied event is
committed in the same transaction as the parties it changed.

A full export also looks at the parties the register gave us before (sources ``ar`` and
``ar-sync``; not ``config``) that it does not list: a deletion whose event comes before the
export's sequence number is never read as an event, so each is asked for alone and marked
inactive when that lookup does not find it either (as an event's party is). Only an export that
includes deactivated parties says so much; without them nothing is swept.

So a sync that fails half-way keeps every committed chunk and resumes exactly there; it never
deletes a party (a deactivated party is kept, marked inactive, as the register reports it). A
party an event names that the register then does not return (deleted) is kept too, marked
inactive, so nothing is sent to it; its record coming back makes it what the record says. One
left out of a bulk answer is asked for alone first, and marked inactive only when that lookup
does not find it either, and never from a bulk answer holding a record it could not attribute
to a HER-id asked for (a record whose HER-id cannot be read). Progress lives in ``kv_state``.

A chunk's parties are asked for in one bulk lookup (up to 100 HER-ids a call; ``serve`` commits
10 parties a chunk, ``ar sync`` 50), and only the certificates whose bytes we do not hold yet are
fetched, two calls a party at most: a re-sync of unchanged parties fetches no certificate. A
register without the bulk lookup is asked party by party.

One party's record that cannot be used (a party type we do not know, a certificate that cannot
be read, whose thumbprint is not the one named, or that belongs to another organisation) does not
stop the sync: that party keeps its stored copy, is named with the reason in
``SyncReport.refused`` and in the standing list :func:`refused_parties` (committed with the
chunk), and the sync goes on and advances. A later sync that reads the party (the register
changed it again, or ``--full``) takes it off that list. Only an answer that is malformed as a
whole (not JSON, not a list, an event without a sequence number) stops the sync.

The register's record names every certificate the party has: a role it names none for is
cleared (a withdrawn signing certificate stays the previous one, accepted for the grace period
of a rollover), unlike an import of files that may not name certificates at all.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

from sqlalchemy import select

from meldingstjener.registry.ar_client import BULK_LOOKUP_LIMIT, ArClient, ArEvent
from meldingstjener.registry.ar_json import with_certificates
from meldingstjener.registry.certificates import PartyCertificate
from meldingstjener.registry.errors import ArPartyNotFound, ArRecordRefused, RegistryError
from meldingstjener.registry.parties import CommunicationParty
from meldingstjener.registry.store import held_certificates, save_parties
from meldingstjener.store.tables import PartyRow, StateRow
from meldingstjener.store.uow import Store, UnitOfWork

__all__ = [
    "LAST_SEQUENCE_KEY",
    "REFUSED_KEY",
    "SyncInterrupted",
    "SyncReport",
    "last_synced_sequence",
    "refused_parties",
    "sync_progress",
    "sync_register",
]

LAST_SEQUENCE_KEY = "registry.ar.last_sequence_number"
EXPORT_SEQUENCE_KEY = "registry.ar.export.sequence_number"
EXPORT_DONE_KEY = "registry.ar.export.done_through_her_id"
# The last stored party the export did not list that was looked up alone (its deletion check):
# a run whose budget ends among them goes on after it, not from the first again.
EXPORT_UNLISTED_DONE_KEY = "registry.ar.export.unlisted_done_through_her_id"
# The parties whose latest record could not be used, {HER-id: why}: a JSON object.
REFUSED_KEY = "registry.ar.refused"
# When a sync last brought the copy up to the register's newest event (ISO 8601, UTC).
LAST_SYNCED_AT_KEY = "registry.ar.last_synced_at"
SOURCE = "ar-sync"
# How long past its budget a run's register calls may go on at least: the chunk under way when
# the budget ran out is finished (a budget of nothing is one chunk a run), not cut and failed.
MIN_OVERRUN_SECONDS = 10.0
_REASON_LENGTH = 300  # of each stored reason: the register's text, quoted, can be long
_T = TypeVar("_T")
log = logging.getLogger(__name__)


@dataclass
class SyncReport:
    mode: str = "events"  # "full" when the export ran (or resumed)
    resumed: bool = False
    parties_written: int = 0
    events_applied: int = 0
    not_found: list[str] = field(default_factory=list)
    # of not_found, the stored parties this run marked inactive
    deactivated: list[str] = field(default_factory=list)
    # HER-id -> why its record was not used (the stored copy is kept); this run's
    refused: dict[str, str] = field(default_factory=dict)
    # refused by an earlier sync, read fine (or gone from the register) in this one
    no_longer_refused: list[str] = field(default_factory=list)
    last_sequence_number: int | None = None
    # False when the time given ran out first: what was done is kept, the next run goes on
    complete: bool = True


class SyncInterrupted(RegistryError):
    """The sync stopped half-way; what was committed stays, the next run resumes from it."""

    code = "ar-sync-interrupted"

    def __init__(self, message: str, report: SyncReport) -> None:
        super().__init__(message)
        self.report = report


def last_synced_sequence(uow: UnitOfWork) -> int | None:
    value = uow.state.get(LAST_SEQUENCE_KEY)
    return int(value) if value else None


def refused_parties(uow: UnitOfWork) -> dict[str, str]:
    """The parties whose latest register record a sync could not use, with the reason: each
    keeps its stored copy until a sync reads it."""
    value = uow.state.get(REFUSED_KEY)
    try:
        found = json.loads(value) if value else {}
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def sync_progress(uow: UnitOfWork) -> dict[str, object]:
    """Where the sync stands, as ``ar status`` shows it: when it last caught up with the
    register, the event reached, a first (or ``--full``) export under way and how far it got
    (the last HER-id done; the export goes in HER-id order), and the refused parties."""
    export_sequence = uow.state.get(EXPORT_SEQUENCE_KEY)
    return {
        "last_synced_at": uow.state.get(LAST_SYNCED_AT_KEY),
        "last_sequence_number": last_synced_sequence(uow),
        "export_in_progress": bool(export_sequence),
        "export_sequence_number": int(export_sequence) if export_sequence else None,
        "export_done_through_her_id": uow.state.get(EXPORT_DONE_KEY) if export_sequence else None,
        "refused": refused_parties(uow),
    }


def sync_register(
    store: Store,
    client: ArClient,
    *,
    full: bool = False,
    chunk_size: int = 50,
    page_size: int = 1000,
    budget_seconds: float | None = None,
) -> SyncReport:
    """Bring the local copy up to date; raises :class:`SyncInterrupted` on a failure half-way.

    With ``budget_seconds`` it stops after the chunk during which that time ran out, with
    ``report.complete`` False (a worker must not be taken for the hours a first export of the
    whole register takes); the next call resumes. The register's calls end within the budget
    and one more (at least :data:`MIN_OVERRUN_SECONDS`: the chunk under way when it ran out
    may finish, nothing longer): a register
    answering a byte at a time would else hold the run, and its worker, as long as it likes; a
    call cut there stops the sync as the register being unavailable."""
    report = SyncReport()
    stop_at = None if budget_seconds is None else time.monotonic() + budget_seconds
    overrun = max(budget_seconds or 0.0, MIN_OVERRUN_SECONDS)
    client.deadline(None if stop_at is None else stop_at + overrun)

    def out_of_time() -> bool:
        if stop_at is not None and time.monotonic() >= stop_at:
            report.complete = False
            return True
        return False

    with store.unit_of_work() as uow:
        last = last_synced_sequence(uow)
        export_running = bool(uow.state.get(EXPORT_SEQUENCE_KEY))
        if full and not export_running:
            _clear(uow, EXPORT_DONE_KEY)
            _clear(uow, EXPORT_UNLISTED_DONE_KEY)
            uow.commit()
    try:
        if full or last is None or export_running:
            report.mode = "full"
            report.resumed = export_running
            _full_export(store, client, report, chunk_size, out_of_time)
        else:
            report.resumed = True
        if report.complete:
            _apply_events(store, client, report, chunk_size, page_size, out_of_time)
        if report.complete:
            with store.unit_of_work() as uow:
                uow.state.set(LAST_SYNCED_AT_KEY, datetime.now(UTC).isoformat())
                uow.commit()
    except RegistryError as exc:
        if isinstance(exc, SyncInterrupted):
            raise
        with store.unit_of_work() as uow:
            report.last_sequence_number = last_synced_sequence(uow)
        raise SyncInterrupted(
            f"register sync stopped after {report.parties_written} parties: {exc}; what was "
            "synced is kept, run the sync again to resume",
            report,
        ) from exc
    finally:
        client.deadline(None)
    return report


def _full_export(
    store: Store,
    client: ArClient,
    report: SyncReport,
    chunk_size: int,
    out_of_time: Callable[[], bool],
) -> None:
    export = client.export()
    with store.unit_of_work() as uow:
        stored = uow.state.get(EXPORT_SEQUENCE_KEY)
        # Resuming keeps the sequence number of the export we started: events after it are
        # replayed, which is harmless (upserts) and misses nothing.
        target = int(stored) if stored else export.last_sequence_number
        if not stored:
            uow.state.set(EXPORT_SEQUENCE_KEY, str(target))
            uow.commit()
        done = int(uow.state.get(EXPORT_DONE_KEY) or 0)
    todo = sorted(int(h) for h in export.her_ids if int(h) > done)
    for chunk in _chunks(todo, chunk_size):
        fetched = _fetch(store, client, [str(h) for h in chunk])
        with store.unit_of_work() as uow:
            _save(uow, fetched, report, {})
            uow.state.set(EXPORT_DONE_KEY, str(chunk[-1]))
            uow.commit()
        _reported(fetched, report)
        if out_of_time():
            return  # the export's keys stay: the next run resumes after chunk[-1]
    if export.includes_deactivated:
        listed = set(export.her_ids)
        with store.unit_of_work() as uow:
            checked = int(uow.state.get(EXPORT_UNLISTED_DONE_KEY) or 0)
            unlisted = sorted(
                (h for h in _register_sourced_active(uow) if h not in listed and int(h) > checked),
                key=int,
            )
        for her_ids in _chunks(unlisted, chunk_size):
            fetched = _Fetched()
            _confirm_missing(store, client, her_ids, {}, her_ids, fetched)
            with store.unit_of_work() as uow:
                _save(uow, fetched, report, {})
                # those found stay active, and unlisted: the next run goes on after them
                uow.state.set(EXPORT_UNLISTED_DONE_KEY, str(her_ids[-1]))
                uow.commit()
            _reported(fetched, report)
            if out_of_time():
                return  # resumed, the export lists nothing new; the rest are looked at then
    with store.unit_of_work() as uow:
        uow.state.set(LAST_SEQUENCE_KEY, str(target))
        _clear(uow, EXPORT_SEQUENCE_KEY)
        _clear(uow, EXPORT_DONE_KEY)
        _clear(uow, EXPORT_UNLISTED_DONE_KEY)
        uow.commit()
    report.last_sequence_number = target


def _register_sourced_active(uow: UnitOfWork) -> list[str]:
    """The active stored parties the register gave us (a sync, or terms taken from it), in
    HER-id order; not those of ``[[partners]]`` nor of imported files."""
    query = (
        select(PartyRow.her_id)
        .where(PartyRow.source.in_(("ar", SOURCE)), PartyRow.active.is_(True))
        .order_by(PartyRow.her_id)
    )
    return list(uow.session.scalars(query))


def _apply_events(
    store: Store,
    client: ArClient,
    report: SyncReport,
    chunk_size: int,
    page_size: int,
    out_of_time: Callable[[], bool],
) -> None:
    with store.unit_of_work() as uow:
        last = last_synced_sequence(uow) or 0
    report.last_sequence_number = last
    while True:
        events = client.events(last + 1, max_events=page_size)
        events = [e for e in events if e.sequence_number > last]
        if not events:
            return
        for chunk in _chunks(events, chunk_size):
            fetched = _fetch(store, client, _distinct_her_ids(chunk))
            with store.unit_of_work() as uow:
                _save(uow, fetched, report, {e.her_id: e.event_type for e in chunk})
                uow.state.set(LAST_SEQUENCE_KEY, str(chunk[-1].sequence_number))
                uow.commit()
            _reported(fetched, report)
            last = chunk[-1].sequence_number
            report.events_applied += len(chunk)
            report.last_sequence_number = last
            if out_of_time():
                return


@dataclass
class _Fetched:
    """One chunk's parties as read from the register."""

    parties: list[CommunicationParty] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # HER-id -> why not used
    not_found: list[str] = field(default_factory=list)
    no_longer_refused: list[str] = field(default_factory=list)
    deactivated: list[str] = field(default_factory=list)


def _save(
    uow: UnitOfWork, fetched: _Fetched, report: SyncReport, event_types: dict[str, str]
) -> None:
    """Write the chunk's parties (a certificate of another organisation refuses its party here),
    mark the stored ones the register no longer returns inactive, and bring the standing list
    of refused parties up to date, in the caller's transaction. ``event_types``: the type of
    the last event of each HER-id of the chunk (none for the export)."""
    report.parties_written += save_parties(
        uow,
        fetched.parties,
        source=SOURCE,
        names_all_certificates=True,
        refused=fetched.refused,
    )
    for her_id in fetched.not_found:
        row = uow.parties.get(her_id)
        if row is None or not row.active:
            continue
        row.active = False  # kept, as the register had it last, but nothing is sent to it
        fetched.deactivated.append(her_id)
        log.warning(
            "HER-id %s is no longer in the address register (event %s): kept, marked inactive",
            her_id,
            (event_types.get(her_id) or "export")[:60],
        )
    standing = refused_parties(uow)
    settled = [p.her_id for p in fetched.parties if p.her_id not in fetched.refused]
    fetched.no_longer_refused = [
        her_id for her_id in (*settled, *fetched.not_found) if her_id in standing
    ]
    for her_id in fetched.no_longer_refused:
        del standing[her_id]
    for her_id, reason in fetched.refused.items():
        if her_id.isdigit():  # a record without a HER-id is not a party we could read later
            standing[her_id] = reason[:_REASON_LENGTH]
    if standing:
        uow.state.set(REFUSED_KEY, json.dumps(standing, sort_keys=True))
    elif fetched.no_longer_refused:
        uow.state.delete(REFUSED_KEY)


def _reported(fetched: _Fetched, report: SyncReport) -> None:
    report.not_found += fetched.not_found
    report.deactivated += fetched.deactivated
    report.refused.update(fetched.refused)
    report.no_longer_refused += fetched.no_longer_refused


def _fetch(store: Store, client: ArClient, her_ids: Sequence[str]) -> _Fetched:
    fetched = _Fetched()
    for part in _chunks(her_ids, BULK_LOOKUP_LIMIT):
        found = client.parties(part)
        if found is None:
            with store.unit_of_work() as uow:
                held = held_certificates(uow, part)
            _fetch_one_by_one(client, part, held, fetched)
            continue
        fetched.refused.update(found.refused)
        by_her_id = {party.her_id: party for party in found.parties}
        with store.unit_of_work() as uow:
            held = held_certificates(uow, by_her_id)
        missing: list[str] = []
        for her_id in part:
            party = by_her_id.get(her_id)
            if party is None:
                if her_id not in found.refused:
                    missing.append(her_id)
                continue
            try:
                fetched.parties.append(_with_new_certificates(client, party, held))
            except ArRecordRefused as refused:  # its certificate: this party only
                fetched.refused[her_id] = refused.reason
        if missing:
            _confirm_missing(store, client, part, found.refused, missing, fetched)
    return fetched


def _confirm_missing(
    store: Store,
    client: ArClient,
    asked: Sequence[str],
    refused: Mapping[str, str],
    missing: Sequence[str],
    fetched: _Fetched,
) -> None:
    """HER-ids a bulk answer left out: each asked for alone, and marked gone (inactive, and
    then given up by every send) only when that lookup does not find it. A bulk answer may
    leave a party out by mistake, and a record whose HER-id cannot be read is refused as
    ``entry N``, its HER-id then missing though the register has it: so nothing is marked gone
    from a bulk answer with a refusal it does not name a HER-id asked for."""
    with store.unit_of_work() as uow:
        held = held_certificates(uow, missing)
    confirmed = _Fetched()
    _fetch_one_by_one(client, missing, held, confirmed)
    fetched.parties += confirmed.parties
    fetched.refused.update(confirmed.refused)
    unattributed = [key for key in refused if key not in asked]
    if not unattributed:
        fetched.not_found += confirmed.not_found  # gone from the register: kept, inactive
        return
    for her_id in confirmed.not_found:
        log.warning(
            "HER-id %s was not found in the address register, but the same bulk answer held "
            "%d record(s) it could not attribute: kept as it was, not marked inactive",
            her_id,
            len(unattributed),
        )


def _with_new_certificates(
    client: ArClient, party: CommunicationParty, held: set[tuple[str, str, str]]
) -> CommunicationParty:
    """The party with the bytes of each certificate it names that we do not hold (the ones we
    hold are kept by :func:`save_parties`, since the record names them by thumbprint). One whose
    bytes the register does not have refuses the party: saved, the record would clear the bytes
    we hold for the old one, and then neither sign nor encrypt with the party would work."""
    fetched: dict[str, PartyCertificate | None] = {}
    for role, named in (
        ("signing", party.signing_certificate),
        ("encryption", party.encryption_certificate),
    ):
        if named is None or named.der is not None:
            continue
        if named.thumbprint is not None and (party.her_id, role, named.thumbprint) in held:
            continue
        certificate = client.certificate(party.her_id, role)
        if certificate is None:
            raise ArRecordRefused(party.her_id, _no_bytes(role, named))
        fetched[role] = certificate
    if not fetched:
        return party
    return with_certificates(
        party, signing=fetched.get("signing"), encryption=fetched.get("encryption")
    )


def _no_bytes(role: str, named: PartyCertificate) -> str:
    return (
        f"the register names {role} certificate {named.thumbprint} and has no bytes for it; "
        "the stored copy is kept"
    )


def _fetch_one_by_one(
    client: ArClient, her_ids: Iterable[str], held: set[tuple[str, str, str]], fetched: _Fetched
) -> None:
    for her_id in her_ids:
        try:
            party = client.party(her_id, with_certificates=False)
            fetched.parties.append(_with_new_certificates(client, party, held))
        except ArPartyNotFound:
            fetched.not_found.append(her_id)  # gone from the register: kept, inactive
        except ArRecordRefused as refused:  # its record or a certificate: this party only
            fetched.refused[her_id] = refused.reason


def _distinct_her_ids(events: Sequence[ArEvent]) -> list[str]:
    return list(dict.fromkeys(e.her_id for e in events))


def _chunks(items: Sequence[_T], size: int) -> Iterable[Sequence[_T]]:
    step = max(1, size)
    for start in range(0, len(items), step):
        yield items[start : start + step]


def _clear(uow: UnitOfWork, key: str) -> None:
    row = uow.session.get(StateRow, key)
    if row is not None:
        uow.session.delete(row)
