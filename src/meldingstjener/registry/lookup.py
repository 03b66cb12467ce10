"""Finding a receiver: service-based addressing and a party cache with expiry.

Service-based addressing: a message to a service (e.g. "Legevakt") goes to its organisation's
EDI address, with the service named in the MsgHead. :func:`resolve_receiver` turns any HER-id
into (organisation, service) and, where service-based addressing is mandatory for the
organisation, refuses to address the organisation itself while it has services.

:class:`PartyCache` keeps looked-up parties for a while (the register is slow and may be down);
before a cached party is handed out its certificates are validated again, because a certificate
can expire or be revoked while it sits in the cache. A cached party whose certificates fail is
fetched afresh; if the fresh one fails too, :class:`CertificateRejected` says why.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from sqlalchemy import select

from meldingstjener.registry.errors import RegistryError
from meldingstjener.registry.parties import CommunicationParty, PartyType
from meldingstjener.registry.store import party_from_row
from meldingstjener.security.certs import Usage
from meldingstjener.security.validation import CertificateValidator
from meldingstjener.store.tables import PartyRow
from meldingstjener.store.uow import UnitOfWork

__all__ = [
    "AddressingError",
    "CertificateRejected",
    "PartyCache",
    "ResolvedReceiver",
    "resolve_receiver",
    "services_of",
]


class AddressingError(RegistryError):
    """A receiver that cannot be addressed as asked. Codes: ``party-unknown``,
    ``service-without-organisation``, ``service-addressing-required``, ``party-inactive``."""

    code = "addressing"


class CertificateRejected(RegistryError):
    code = "certificate-rejected"


@dataclass(frozen=True, slots=True)
class ResolvedReceiver:
    organisation: CommunicationParty
    service: CommunicationParty | None  # set when the message is addressed to a service
    person: CommunicationParty | None = None

    @property
    def her_id(self) -> str:
        """The HER-id that receives on the wire (the organisation's)."""
        return self.organisation.her_id


def services_of(uow: UnitOfWork, organisation_her_id: str) -> list[CommunicationParty]:
    query = select(PartyRow).where(
        PartyRow.parent_her_id == organisation_her_id, PartyRow.party_type == "service"
    )
    return [party_from_row(row) for row in uow.session.scalars(query.order_by(PartyRow.her_id))]


def resolve_receiver(
    uow: UnitOfWork,
    her_id: str,
    *,
    service_addressing_required: Callable[[CommunicationParty], bool] | bool = False,
) -> ResolvedReceiver:
    """The organisation (and service or person) that ``her_id`` names, from the local copy."""
    party = _get(uow, her_id)
    if party is None:
        raise AddressingError(
            f"HER-id {her_id} is not in the local address register; sync or import it first",
            code="party-unknown",
        )
    if not party.active:
        raise AddressingError(
            f"HER-id {her_id} is marked inactive in the address register; choose another receiver",
            code="party-inactive",
        )
    if party.party_type is PartyType.ORGANISATION:
        required = (
            service_addressing_required(party)
            if callable(service_addressing_required)
            else service_addressing_required
        )
        if required:
            services = [s for s in services_of(uow, party.her_id) if s.active]
            if services:
                names = ", ".join(f"{s.her_id} {s.name}" for s in services[:5])
                raise AddressingError(
                    f"organisation {party.her_id} takes messages only for one of its services "
                    f"(service-based addressing); address one of: {names}",
                    code="service-addressing-required",
                )
        return ResolvedReceiver(organisation=party, service=None)
    organisation = _organisation_of(uow, party)
    if party.party_type is PartyType.SERVICE:
        return ResolvedReceiver(organisation=organisation, service=party)
    return ResolvedReceiver(organisation=organisation, service=None, person=party)


def _organisation_of(uow: UnitOfWork, party: CommunicationParty) -> CommunicationParty:
    seen = {party.her_id}
    current = party
    while current.party_type is not PartyType.ORGANISATION:
        parent_id = current.parent_her_id
        parent = _get(uow, parent_id) if parent_id else None
        if parent is None or parent.her_id in seen:
            raise AddressingError(
                f"{party.party_type.value} {party.her_id} has no organisation in the local "
                f"register (parent HER-id {parent_id or 'missing'}); sync the parent first",
                code="service-without-organisation",
            )
        seen.add(parent.her_id)
        current = parent
    return current


def _get(uow: UnitOfWork, her_id: str) -> CommunicationParty | None:
    row = uow.parties.get(str(her_id))
    return party_from_row(row) if row is not None else None


# --- cache ---------------------------------------------------------------------------------


@dataclass
class _Entry:
    party: CommunicationParty
    expires_at: float


class PartyCache:
    """Parties by HER-id for ``ttl_seconds``; certificates re-validated on every hit."""

    def __init__(
        self,
        loader: Callable[[str], CommunicationParty | None],
        *,
        ttl_seconds: float = 3600.0,
        validator: CertificateValidator | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._loader = loader
        self._ttl = ttl_seconds
        self._validator = validator
        self._clock = clock
        self._now = now
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self.loads = 0  # how often the loader was asked (for operators and tests)

    def get(self, her_id: str) -> CommunicationParty | None:
        key = str(her_id)
        with self._lock:
            entry = self._entries.get(key)
        fresh = entry is not None and self._clock() < entry.expires_at
        if entry is not None and fresh and not self._problems(entry.party):
            return entry.party
        party = self._load(key)
        if party is None:
            return None
        problems = self._problems(party)
        if problems:
            raise CertificateRejected(
                f"the certificates of HER-id {key} are not acceptable: {'; '.join(problems)}"
            )
        return party

    def invalidate(self, her_id: str | None = None) -> None:
        with self._lock:
            if her_id is None:
                self._entries.clear()
            else:
                self._entries.pop(str(her_id), None)

    def _load(self, her_id: str) -> CommunicationParty | None:
        self.loads += 1
        party = self._loader(her_id)
        with self._lock:
            if party is None:
                self._entries.pop(her_id, None)
            else:
                self._entries[her_id] = _Entry(party, self._clock() + self._ttl)
        return party

    def _problems(self, party: CommunicationParty) -> list[str]:
        moment = self._now()
        problems = []
        for usage, certificate in _certificates(party):
            if certificate is None:
                continue
            if self._validator is None:
                # Without trust anchors we can still refuse an expired certificate.
                if not (
                    certificate.not_valid_before_utc <= moment <= certificate.not_valid_after_utc
                ):
                    problems.append(f"{usage} certificate outside its validity period")
                continue
            check = self._validator.validate(certificate, usage=usage, at=moment)
            if not check.ok:
                problems.append(f"{usage} certificate: {check.summary()}")
        return problems


def _certificates(
    party: CommunicationParty,
) -> Iterable[tuple[Usage, x509.Certificate | None]]:
    pairs: tuple[tuple[Usage, bytes | None], ...] = (
        ("signing", party.signing_certificate_der),
        ("encryption", party.encryption_certificate_der),
    )
    for usage, der in pairs:
        yield usage, (x509.load_der_x509_certificate(der) if der else None)
