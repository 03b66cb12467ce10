"""Parties as MsgHead 1.2 and the Dialogmelding describe them: organisation -> service -> person.

An ``Organisation`` may hold a nested ``Organisation`` (the service, for service-based
addressing) and a ``HealthcareProfessional``; each carries ``Ident`` entries (Id + TypeId), one
of which is normally the HER-id (TypeId V="HER"). ``Person`` is used for patients and other
people; its fields are identity data, so they are kept out of ``repr`` (and therefore out of
logs and tracebacks).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from meldingstjener.formats.xmlutil import Coded
from meldingstjener.model import HerId, InvalidHerId, PartyRef

HER = "HER"
HER_ID_TYPE = Coded(v=HER, dn="HER-id", s="2.16.578.1.12.4.1.1.9051")


@dataclass(frozen=True, slots=True)
class Ident:
    """An identifier and its type (TypeId V: HER, ENH, HPR, FNR, ...)."""

    id: str
    type_id: Coded

    @property
    def is_her(self) -> bool:
        return self.type_id.v == HER


def her_ident(her_id: str | int) -> Ident:
    return Ident(id=str(HerId(her_id)), type_id=HER_ID_TYPE)


def her_id_of(idents: Iterable[Ident]) -> HerId | None:
    """The first valid HER-id among ``idents`` (an invalid one, or a second HER-id, is the
    validator's to report: see :mod:`meldingstjener.formats.repeats`)."""
    for ident in idents:
        if ident.is_her:
            try:
                return HerId(ident.id)
            except InvalidHerId:
                return None
    return None


@dataclass(frozen=True, slots=True)
class Address:
    type: Coded | None = None
    street: str | None = None
    postal_code: str | None = None
    city: str | None = None
    postbox: str | None = None


@dataclass(frozen=True, slots=True)
class HealthcareProfessional:
    """A health professional (the person level of an address)."""

    idents: tuple[Ident, ...] = ()
    type: Coded | None = None
    role_to_patient: Coded | None = None
    family_name: str | None = None
    middle_name: str | None = None
    given_name: str | None = None
    telecoms: tuple[str, ...] = ()

    @property
    def her_id(self) -> HerId | None:
        return her_id_of(self.idents)


@dataclass(frozen=True, slots=True)
class Organisation:
    """An organisation, or (nested) a service under it."""

    name: str | None
    idents: tuple[Ident, ...] = ()
    type: Coded | None = None
    address: Address | None = None
    telecoms: tuple[str, ...] = ()
    organisation: Organisation | None = None
    healthcare_professional: HealthcareProfessional | None = None

    @property
    def her_id(self) -> HerId | None:
        return her_id_of(self.idents)


@dataclass(frozen=True, slots=True)
class Party:
    """The sender or receiver of a message: the organisation tree and an optional ComMethod."""

    organisation: Organisation
    com_method: Coded | None = None

    @property
    def service(self) -> Organisation | None:
        return self.organisation.organisation

    @property
    def person(self) -> HealthcareProfessional | None:
        """The health professional addressed: under the service if there is one, else the org."""
        service = self.service
        if service is not None and service.healthcare_professional is not None:
            return service.healthcare_professional
        return self.organisation.healthcare_professional

    @property
    def her_ids(self) -> PartyRef:
        service = self.service
        person = self.person
        return PartyRef(
            organisation=self.organisation.her_id,
            service=service.her_id if service is not None else None,
            person=person.her_id if person is not None else None,
        )

    @classmethod
    def of(
        cls,
        organisation_name: str,
        organisation_her_id: str | int,
        *,
        service_name: str | None = None,
        service_her_id: str | int | None = None,
        person_family_name: str | None = None,
        person_given_name: str | None = None,
        person_her_id: str | int | None = None,
    ) -> Party:
        """A party addressed by HER-ids at up to three levels (service-based addressing)."""
        person = None
        if person_her_id is not None:
            person = HealthcareProfessional(
                idents=(her_ident(person_her_id),),
                family_name=person_family_name,
                given_name=person_given_name,
            )
        service = None
        if service_her_id is not None:
            service = Organisation(name=service_name or "", idents=(her_ident(service_her_id),))
            if person is not None:
                service = Organisation(
                    name=service.name, idents=service.idents, healthcare_professional=person
                )
                person = None
        organisation = Organisation(
            name=organisation_name,
            idents=(her_ident(organisation_her_id),),
            organisation=service,
            healthcare_professional=person,
        )
        return cls(organisation=organisation)


@dataclass(frozen=True, slots=True)
class Person:
    """A patient or another person. Identity fields are hidden from repr on purpose."""

    family_name: str | None = field(default=None, repr=False)
    middle_name: str | None = field(default=None, repr=False)
    given_name: str | None = field(default=None, repr=False)
    date_of_birth: str | None = field(default=None, repr=False)
    sex: Coded | None = field(default=None, repr=False)
    idents: tuple[Ident, ...] = field(default=(), repr=False)
    address: Address | None = field(default=None, repr=False)
    telecoms: tuple[str, ...] = field(default=(), repr=False)


Patient = Person
