"""HER-ids: identifiers of communication parties in the address register (Adresseregisteret).

A HER-id is a positive integer, written as decimal digits. A party is addressed at up to three
levels: the organisation, a service under it (service-based addressing) and a person.
"""

from __future__ import annotations

from dataclasses import dataclass


class InvalidHerId(ValueError):
    """A value that cannot be a HER-id."""


class HerId(str):
    """A validated HER-id, kept as its decimal string (as it travels in XML and AMQP properties)."""

    __slots__ = ()

    def __new__(cls, value: str | int) -> HerId:
        text = str(value).strip()
        if not text.isascii() or not text.isdigit() or len(text) > 12 or int(text) <= 0:
            raise InvalidHerId(f"not a HER-id: {text[:20]!r} (expected 1 to 12 digits, not zero)")
        return super().__new__(cls, str(int(text)))


@dataclass(frozen=True, slots=True)
class PartyRef:
    """Where a message is addressed: organisation, optional service, optional person (all HER-ids).

    ``most_specific`` is what the ebXML envelope carries when a service is addressed.
    """

    organisation: HerId | None = None
    service: HerId | None = None
    person: HerId | None = None

    @property
    def most_specific(self) -> HerId | None:
        return self.person or self.service or self.organisation

    @property
    def communication_party(self) -> HerId | None:
        """The HER-id the envelope addresses: the service if any, else the organisation."""
        return self.service or self.organisation

    def as_dict(self) -> dict[str, str | None]:
        return {
            "organisation": self.organisation,
            "service": self.service,
            "person": self.person,
        }
