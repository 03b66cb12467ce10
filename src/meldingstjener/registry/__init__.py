"""The address register, CPP/CPA and partner agreements: who a receiver is, how to reach it,
and what we have agreed to send it.

Exported here are the pure parts (no database, no network): parsers for the register's JSON and
SOAP records and for CPPA 2.0 documents, the recipient search index, and the partner-agreement
rules. The parts that touch storage and the network are imported from their modules so that
importing this package stays cheap: ``store`` (parties and agreements in the database),
``policy`` (``check_outbound``, the gate the engine calls), ``lookup`` (service-based addressing,
the party cache), ``auth``/``helseid``/``ar_client``/``cppa_client`` (HelseID tokens with
``private_key_jwt`` and DPoP, the register and CPPA REST APIs), ``sync`` (resumable register
sync) and ``fakes`` (local fake servers for tests).
"""

from meldingstjener.registry.agreements import (
    AgreementState,
    Contact,
    NotAgreed,
    PartnerAgreement,
    check_send,
    check_state_change,
    choose_version,
    negotiate_version,
    resolve_terms,
)
from meldingstjener.registry.ar_json import (
    parse_certificate_json,
    parse_parties_json,
    parse_party_json,
    with_certificates,
)
from meldingstjener.registry.ar_soap import parse_ar_soap, parse_ar_soap_all
from meldingstjener.registry.certificates import PartyCertificate
from meldingstjener.registry.cpa import (
    agreement_for,
    parse_cpa,
    parse_cpp,
    parse_cppa,
    terms_from_cpp,
)
from meldingstjener.registry.cppa_model import CollaborationProtocol
from meldingstjener.registry.errors import (
    ArFormatError,
    ArPartyNotFound,
    CpaFormatError,
    PartyNotInAgreement,
    RegistryError,
)
from meldingstjener.registry.parties import CodedValue, CommunicationParty, PartyType, QueueKind
from meldingstjener.registry.search import PartyIndex, SearchHit
from meldingstjener.registry.terms import (
    AgreedMessage,
    AgreementTerms,
    ChannelTerms,
    TermsSource,
    terms_from_ar,
)

__all__ = [
    "AgreedMessage",
    "AgreementState",
    "AgreementTerms",
    "ArFormatError",
    "ArPartyNotFound",
    "ChannelTerms",
    "CodedValue",
    "CollaborationProtocol",
    "CommunicationParty",
    "Contact",
    "CpaFormatError",
    "NotAgreed",
    "PartnerAgreement",
    "PartyCertificate",
    "PartyIndex",
    "PartyNotInAgreement",
    "PartyType",
    "QueueKind",
    "RegistryError",
    "SearchHit",
    "TermsSource",
    "agreement_for",
    "check_send",
    "check_state_change",
    "choose_version",
    "negotiate_version",
    "parse_ar_soap",
    "parse_ar_soap_all",
    "parse_certificate_json",
    "parse_cpa",
    "parse_cpp",
    "parse_cppa",
    "parse_parties_json",
    "parse_party_json",
    "resolve_terms",
    "terms_from_ar",
    "terms_from_cpp",
    "with_certificates",
]
