"""Local fake servers for NHN's register APIs, for tests and development.

Small stdlib ``http.server`` apps on 127.0.0.1 (a free port each): the address register's
CommunicationParty REST API, the CPPA REST API and a HelseID token endpoint (client assertions and
DPoP proofs verified). They implement the
published paths and JSON/XML shapes closely enough for our clients; they are not a model of NHN's
business rules. Start one with ``with serve(app) as base_url: ...``.
"""

from meldingstjener.registry.fakes.address_register import FakeAddressRegister
from meldingstjener.registry.fakes.cppa import FakeCppa
from meldingstjener.registry.fakes.helseid import FakeHelseId, fixed_bearer
from meldingstjener.registry.fakes.server import FakeApp, Reply, Request, serve

__all__ = [
    "FakeAddressRegister",
    "FakeApp",
    "FakeCppa",
    "FakeHelseId",
    "Reply",
    "Request",
    "fixed_bearer",
    "serve",
]
