"""Who a partner is and how to reach it, as the engine needs it, read from the store.

The communication-party and partner-agreement tables are filled by the address register, CPAs and
``[[partners]]`` in the configuration (synced here at start). Certificates are parsed once and
cached by a digest of their bytes.

An agreement whose terms came from the address register (source ``ar``) is reached at the address
the party's row has now (its EDI address, or its AMQP queue), not at the copy the agreement took
when it was added: a sync that moves the partner is what the next send uses. An agreement from a
CPA, a CPP, the configuration or the operator keeps its own endpoint (that document is the
agreement). Whether the register has the party active and valid is read with it.

Every message needs its partner several times on each side, so what is read here is kept for
``database.partner_cache_seconds``. A change this process commits to those tables is seen at
once (:mod:`meldingstjener.store.changes`); a change by another process (the operator's CLI, a
second server) within that many seconds.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from sqlalchemy import select

from meldingstjener.config import ConfigError, PartnerSettings, Settings
from meldingstjener.registry.agreements import AgreementState, PartnerAgreement
from meldingstjener.registry.parties import QueueKind
from meldingstjener.registry.store import agreement_from_row, bindings_from_json
from meldingstjener.registry.terms import AgreedMessage, TermsSource
from meldingstjener.security.certs import (
    CertificateLoadError,
    certificate_from_bytes,
    load_certificate,
    organisation_number,
)
from meldingstjener.store.tables import AgreementRow, PartyRow
from meldingstjener.store.uow import Store, UnitOfWork

_TRANSPORTS = frozenset({"smtp", "http", "amqp"})


@dataclass(frozen=True)
class Route:
    """Where and how one message goes: transport and endpoint, and its envelope's flags:
    AckRequested (without it, nothing is waited for after the send), SyncReply and
    DuplicateElimination. One rule gives them all (:meth:`Partner.route`), for the envelope
    built at submit and for every send of it."""

    channel: str
    endpoint: str | None
    ack_requested: bool = True
    sync_reply: bool = False
    duplicate_elimination: bool = True


@dataclass(frozen=True)
class Partner:
    """A counterparty with the terms of our agreement with it."""

    her_id: str
    name: str
    organisation_her_id: str | None
    our_her_id: str
    channel: str
    endpoint: str | None
    cpa_id: str
    signing_certificate: x509.Certificate | None
    encryption_certificate: x509.Certificate | None
    retries: int
    retry_interval: timedelta
    persist_duration: timedelta
    sync_reply: bool
    auto_apprec: bool
    agreement_state: str
    message_types: tuple[dict[str, object], ...]
    # the party as the address register has it (a configured partner is active). Not the
    # register's IsValidCommunicationParty: it says Type is Service or Person, false for every
    # organisation, and is no mark of a party that may not be sent to.
    active: bool = True
    valid_from: datetime | None = None
    valid_to: datetime | None = None
    # a CPA's or CPP's outbound bindings, each with the channel it goes by (see ``route``)
    bindings: tuple[AgreedMessage, ...] = ()
    # where our other agreements with the party (another HER-id of ours) that have not ended
    # send to
    other_agreements_endpoints: frozenset[str] = frozenset()

    @property
    def endpoints(self) -> frozenset[str]:
        """Every endpoint a message of ours to the party may go to: this agreement's and each
        of its bindings' (see ``route``), and those of our other agreements with the party
        that have not ended."""
        own = {self.route(binding).endpoint for binding in (None, *self.bindings)}
        return frozenset(e for e in own if e is not None) | self.other_agreements_endpoints

    def route(self, binding: AgreedMessage | None) -> Route:
        """How a message going by ``binding`` (the agreement's binding chosen for it, None for
        one without) goes: by the binding's channel when this server can use it (smtp, http or
        amqp, with an endpoint; NAV's CPAs put a question on HTTPS to their gateway and the rest
        on SMTP), its flags from that channel (never: off; always and perMessage, where the
        sender decides: on; syncReplyMode other than none: SyncReply). Else by the agreement's
        channel and endpoint with its flags: an Acknowledgment and duplicate elimination asked
        for, SyncReply as the agreement says; a binding's flags never go with another channel
        than its own, so what the envelope asks for is what the send waits for."""
        channel = binding.channel if binding is not None else None
        if channel is not None and channel.transport in _TRANSPORTS and channel.endpoint:
            return Route(
                channel.transport,
                channel.endpoint,
                ack_requested=channel.ack_requested != "never",
                sync_reply=(channel.sync_reply_mode or "none") != "none",
                duplicate_elimination=channel.duplicate_elimination != "never",
            )
        return Route(self.channel, self.endpoint, True, self.sync_reply, True)

    @property
    def encryption_sha256(self) -> str | None:
        """The SHA-256 (hex) of the encryption certificate: what a message's payload was
        encrypted to (``MessageRow.encrypted_to_sha256``)."""
        certificate = self.encryption_certificate
        return None if certificate is None else certificate_sha256(certificate)

    def unusable_because(self, now: datetime) -> str | None:
        """Why the register says nothing may be sent to the party at ``now``; None if it may:
        Active and the validity period alone decide. Whether an organisation or one of its
        services is to be addressed is the addressing rule's (``registry.lookup``)."""
        if not self.active:
            return "is marked inactive in the address register"
        if self.valid_from is not None and now < self.valid_from:
            return f"is valid in the address register only from {self.valid_from.isoformat()}"
        if self.valid_to is not None and now > self.valid_to:
            return f"was valid in the address register only until {self.valid_to.isoformat()}"
        return None


def certificate_sha256(certificate: x509.Certificate) -> str:
    """The SHA-256 of the certificate's DER bytes, as lower-case hex."""
    return certificate.fingerprint(hashes.SHA256()).hex()


@dataclass(frozen=True)
class SigningCertificates:
    """A party's registered signing certificate, and the one it replaced (if we hold it)."""

    current: x509.Certificate | None
    previous: x509.Certificate | None = None
    replaced_at: datetime | None = None  # when we learnt of the change

    @property
    def known(self) -> bool:
        """We hold a signing certificate of the party, its current or its replaced one: what a
        message names as its From is then someone, not anyone."""
        return self.current is not None or self.previous is not None

    def candidates(self, now: datetime, grace: timedelta) -> list[x509.Certificate]:
        """The certificates a signature by the party may verify with at ``now``: the
        registered one first, then the replaced one for ``grace`` after the change (its resends
        signed before the rollover are still on their way)."""
        found = [self.current] if self.current is not None else []
        if (
            self.previous is not None
            and self.replaced_at is not None
            and grace > timedelta(0)  # 0: the old one is never accepted
            and now - self.replaced_at <= grace
            and self._same_organisation()
        ):
            found.append(self.previous)
        return found

    def _same_organisation(self) -> bool:
        """A rollover keeps the organisation (its organisation number); a HER-id that moved to
        another organisation must not go on accepting the former owner's key."""
        if self.current is None or self.previous is None:
            return True  # the new certificate is not known yet (only its thumbprint)
        current = organisation_number(self.current)
        # two certificates that name no organisation number are not thereby the same one's
        return current is not None and current == organisation_number(self.previous)


class PartnerUnknown(LookupError):
    """No communication party or no agreement for a HER-id."""

    def __init__(self, her_id: str, what: str) -> None:
        super().__init__(f"{what} for HER-id {her_id}")
        self.her_id = her_id
        self.what = what


def cpa_id_for(our_her_id: str, their_her_id: str) -> str:
    """The CPAId used when no CPA names one: stable per pair, the same on both sides."""
    low, high = sorted((our_her_id, their_her_id), key=int)
    return f"nhn:cpa:{low}:{high}"


T = TypeVar("T")


@dataclass(frozen=True)
class _Entry:
    value: object
    generation: int
    expires: float


class PartyDirectory:
    def __init__(
        self,
        store: Store,
        own_her_ids: list[str],
        *,
        cache_seconds: float = 10.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.own_her_ids = own_her_ids
        self.cache_seconds = cache_seconds
        self._monotonic = monotonic
        self._certificates: dict[tuple[str, str], x509.Certificate] = {}
        self._entries: dict[tuple[str, ...], _Entry] = {}
        self._lock = threading.Lock()

    def _cached(self, key: tuple[str, ...], read: Callable[[], T]) -> T:
        """``read()``'s answer (or the PartnerUnknown it raised), kept while still fresh."""
        if self.cache_seconds <= 0:
            return read()
        # the generation is taken BEFORE reading: a change committed meanwhile makes it stale
        generation = self.store.database.generation()
        now = self._monotonic()
        with self._lock:
            entry = self._entries.get(key)
        if entry is None or entry.generation != generation or entry.expires <= now:
            try:
                value: object = read()
            except PartnerUnknown as unknown:
                value = unknown
            entry = _Entry(value, generation, now + self.cache_seconds)
            with self._lock:
                if len(self._entries) > 10_000:  # a flood of unknown senders must not grow it
                    self._entries.clear()
                self._entries[key] = entry
        if isinstance(entry.value, PartnerUnknown):
            raise PartnerUnknown(entry.value.her_id, entry.value.what)
        return entry.value  # type: ignore[return-value]

    def _certificate(self, b64: str | None) -> x509.Certificate | None:
        if not b64:
            return None
        # the whole certificate decides the key: two that share a tail (a forged one copying a
        # real one's signature value and length) must never be taken for each other
        key = ("der", hashlib.sha256(b64.encode()).hexdigest())
        with self._lock:
            cached = self._certificates.get(key)
        if cached is None:
            cached = certificate_from_bytes(base64.b64decode(b64))
            with self._lock:
                self._certificates[key] = cached
        return cached

    def partner(self, uow: UnitOfWork, her_id: str, *, our_her_id: str | None = None) -> Partner:
        """The partner ``her_id`` and our agreement with it; raises :class:`PartnerUnknown`."""
        return self._cached(
            ("partner", her_id, our_her_id or ""),
            lambda: self._read_partner(uow, her_id, our_her_id),
        )

    def _read_partner(self, uow: UnitOfWork, her_id: str, our_her_id: str | None) -> Partner:
        party = uow.parties.get(her_id)
        if party is None:
            raise PartnerUnknown(her_id, "no communication party")
        rows = uow.agreements.for_counterparty(her_id)
        agreement = None
        if our_her_id is not None:
            agreement = next((row for row in rows if row.our_her_id == our_her_id), None)
        if agreement is None:
            candidates = [
                row for row in rows if our_her_id is None or row.our_her_id in self.own_her_ids
            ]
            agreement = candidates[0] if candidates else None
        if agreement is None:
            raise PartnerUnknown(her_id, "no partner agreement")
        partner = self._partner_of(party, agreement)
        # an ended agreement is never sent by again: its endpoint's alert must not stay open
        others = [
            self._partner_of(party, row)
            for row in rows
            if row.our_her_id != agreement.our_her_id
            and row.our_her_id in self.own_her_ids
            and row.state != AgreementState.ENDED.value
        ]
        if not others:
            return partner
        endpoints = frozenset().union(*(other.endpoints for other in others))
        return dataclasses.replace(partner, other_agreements_endpoints=endpoints)

    def _partner_of(self, party: PartyRow, agreement: AgreementRow) -> Partner:
        her_id = party.her_id
        return Partner(
            her_id=her_id,
            name=party.display_name or party.name,
            organisation_her_id=party.parent_her_id,
            our_her_id=agreement.our_her_id,
            channel=agreement.channel,
            endpoint=_endpoint(agreement, party),
            cpa_id=agreement.cpa_id or cpa_id_for(agreement.our_her_id, her_id),
            signing_certificate=self._certificate(party.signing_certificate),
            encryption_certificate=self._certificate(party.encryption_certificate),
            retries=agreement.retries,
            retry_interval=timedelta(seconds=agreement.retry_interval_seconds),
            persist_duration=timedelta(seconds=agreement.persist_duration_seconds),
            sync_reply=agreement.sync_reply_mode != "none",
            auto_apprec=agreement.auto_apprec,
            agreement_state=agreement.state,
            message_types=tuple(agreement.message_types or ()),
            active=bool(party.active),
            valid_from=party.valid_from,
            valid_to=party.valid_to,
            bindings=bindings_from_json(agreement.message_types)[0],
        )

    def agreement(self, uow: UnitOfWork, our_her_id: str, her_id: str) -> PartnerAgreement | None:
        """Our agreement with ``her_id`` as the send check reads it (None: there is none)."""

        def read() -> PartnerAgreement | None:
            row = uow.agreements.for_pair(our_her_id, her_id)
            return None if row is None else agreement_from_row(row)

        return self._cached(("agreement", our_her_id, her_id), read)

    def signing_certificates(self, uow: UnitOfWork, her_id: str) -> SigningCertificates:
        """The signing certificate of ``her_id``, and the one it replaced. Enterprise
        certificates belong to the organisation, so an organisation we know only as the parent
        of a service is found through that service."""
        return self._cached(
            ("signing", her_id), lambda: self._read_signing_certificates(uow, her_id)
        )

    def _read_signing_certificates(self, uow: UnitOfWork, her_id: str) -> SigningCertificates:
        party = uow.parties.get(her_id)
        if party is None:
            # any service row carries the organisation's certificates; the same one each time,
            # and one that knows a replaced certificate before one that does not
            party = uow.session.scalars(
                select(PartyRow)
                .where(PartyRow.parent_her_id == her_id)
                .order_by(PartyRow.signing_cert_replaced_at.desc().nulls_last(), PartyRow.her_id)
                .limit(1)
            ).first()
        if party is None:
            return SigningCertificates(None)
        return SigningCertificates(
            current=self._certificate(party.signing_certificate),
            previous=self._certificate(party.previous_signing_certificate),
            replaced_at=party.signing_cert_replaced_at,
        )


def _endpoint(agreement: AgreementRow, party: PartyRow) -> str | None:
    """Where the agreement's channel reaches the party. Terms from the address register follow
    the party's row, which each sync keeps current (no address there: None, nothing is sent);
    every other agreement names its own endpoint."""
    if agreement.source != TermsSource.AR.value:
        return agreement.endpoint
    if agreement.channel == "smtp":
        return party.edi_address or None
    if agreement.channel == "amqp":
        return (party.amqp_queues or {}).get(QueueKind.ASYNC.value) or None
    return agreement.endpoint


def _b64(certificate: x509.Certificate) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding

    return base64.b64encode(certificate.public_bytes(Encoding.DER)).decode("ascii")


def sync_configured_partners(
    store: Store, settings: Settings, *, at: datetime | None = None
) -> int:
    """Write ``[[partners]]`` from the configuration into the party and agreement tables
    (``at``: the time a changed signing certificate is recorded as replaced).

    The file gives the terms (channel, endpoint, certificates, reliability), written again at
    every start; whether the partner may be sent to now is the operator's (``partners set
    --state``), kept across starts: see :func:`_configured_state`."""
    with store.unit_of_work() as uow:
        for number, partner in enumerate(settings.partners):
            our = settings.our_her_id_for(partner)
            if our is None:
                raise ConfigError(
                    f"partners[{number}].our_her_id: partner {partner.her_id} needs it, or "
                    "identity.organisation_her_id"
                )
            _upsert_partner(uow, partner, our, at, key=f"partners[{number}]")
        uow.commit()
    return len(settings.partners)


def _upsert_partner(
    uow: UnitOfWork, partner: PartnerSettings, our: str, at: datetime | None, *, key: str
) -> None:
    signing = _partner_certificate(partner.signing_cert, f"{key}.signing_cert")
    encryption = _partner_certificate(partner.encryption_cert, f"{key}.encryption_cert")
    uow.parties.upsert(
        PartyRow(
            her_id=partner.her_id,
            parent_her_id=partner.organisation_her_id,
            party_type="service" if partner.organisation_her_id else "organisation",
            name=partner.name or f"partner {partner.her_id}",
            display_name=partner.name or None,
            edi_address=partner.endpoint if partner.channel == "smtp" else None,
            signing_certificate=_b64(signing),
            signing_cert_not_after=signing.not_valid_after_utc,
            encryption_certificate=_b64(encryption),
            encryption_cert_not_after=encryption.not_valid_after_utc,
            active=True,
            source="config",
        ),
        at=at,
    )
    row = uow.agreements.for_pair(our, partner.her_id)
    if row is None:
        row = uow.agreements.add(AgreementRow(our_her_id=our, counterparty_her_id=partner.her_id))
    row.state = _configured_state(row)
    row.channel = partner.channel
    row.endpoint = partner.endpoint
    row.retries = partner.retries
    row.retry_interval_seconds = partner.retry_interval_seconds
    row.persist_duration_seconds = partner.persist_duration_seconds
    row.sync_reply_mode = "signalsOnly" if partner.sync_reply else "none"
    row.auto_apprec = partner.auto_apprec
    row.source = TermsSource.CONFIG.value
    row.valid_to = None  # the configuration is the agreement now, not a CPA it replaced
    row.cpa_id = row.cpa_id or cpa_id_for(our, partner.her_id)


def _partner_certificate(path: Path, key: str) -> x509.Certificate:
    """A ``[[partners]]`` certificate; one that cannot be read is a configuration error that
    names its key (``partners[0].signing_cert``), not a failure of the engine."""
    try:
        return load_certificate(path)
    except CertificateLoadError as exc:
        raise ConfigError(f"{key}: {exc.message}") from None


def _configured_state(row: AgreementRow) -> str:
    """The state of a ``[[partners]]`` agreement after a start. A new one is active (listing
    a partner in the file is the operator's order to send to it). One that exists keeps the
    state the operator gave it, whether the file wrote it or takes it over from another source:
    a suspension must hold until it is lifted by hand, an onboarding state (ordered, testing,
    verified-inactive) moves on only by the routine's steps and their evidence (``partners set
    --state``), and an ended agreement stays ended; none of them is undone by the next ``send``
    or ``serve``."""
    if row.state is None:  # a new row: the column's default is applied only at the INSERT
        return AgreementState.ACTIVE.value
    return row.state
