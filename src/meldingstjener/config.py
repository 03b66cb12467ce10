"""Configuration: one TOML file, environment overrides, validated once at start.

Precedence, highest first: command-line options, environment variables, the TOML file, defaults.
Environment variables are ``MELDINGSTJENER_<KEY>`` for top-level keys and
``MELDINGSTJENER_<SECTION>__<KEY>`` for keys in a section (for example
``MELDINGSTJENER_DATABASE__URL`` or ``MELDINGSTJENER_SERVER__PORT``); a section's key with one
underscore (``MELDINGSTJENER_DATABASE_URL``) is refused, not ignored.

The embedded default needs no file at all: SQLite, payloads and development keys live under the data
directory (``--data-dir``, ``MELDINGSTJENER_DATA_DIR``, default ``./meldingstjener-data``) and HTTP
listens on 127.0.0.1:8080. Every key is explained in ``config.example.toml``.
"""

from __future__ import annotations

import os
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, NamedTuple
from urllib.parse import urlparse

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from meldingstjener.model import HerId, InvalidHerId

Environment = Literal["test", "qa", "prod"]


class ConfigError(ValueError):
    """A configuration problem; the message names each key and what is wrong with it."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _her_id(value: object) -> str:
    try:
        return str(HerId(value))  # type: ignore[arg-type]
    except InvalidHerId as exc:
        raise ValueError(str(exc)) from None


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    public_url: str | None = None
    max_request_bytes: int = Field(default=52_000_000, gt=0)
    # Connections and requests served at once; beyond, a new request is answered 503.
    max_connections: int = Field(default=500, gt=0)
    # A received ebXML body must keep coming: this many seconds, plus one for every
    # ``min_body_bytes_per_second`` received (a sender trickling a byte a second is cut off).
    body_grace_seconds: float = Field(default=30.0, gt=0)
    min_body_bytes_per_second: int = Field(default=1024, gt=0)
    # Peers whose X-Forwarded-For and X-Forwarded-Proto are believed (a reverse proxy), comma
    # separated, or "*". Unset: uvicorn's FORWARDED_ALLOW_IPS, else a proxy on this host only.
    forwarded_allow_ips: str | None = None
    # What this serve process is called in the store (its job claims, its alerts, `instances`).
    # Unset: host name and port. It must be its own among the processes sharing the store.
    instance_name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._:@-]{1,100}$")

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str | None) -> str | None:
        # Its host ends every MessageId, mail Message-Id and content-id of ours
        # (bootstrap.message_id_host): a host that cannot (a typo with <, >, spaces; an IPv6
        # address) would make every submit and send fail, so it is refused here, when the
        # configuration is read
        from meldingstjener.ebxml.ids import is_message_id_host

        if value is None:
            return None
        parsed = urlparse(value)
        try:
            host = parsed.hostname
            parsed.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError:
            host = None
        if parsed.scheme not in ("http", "https") or not host or not is_message_id_host(host):
            raise ValueError(
                "must be an http(s) URL with a host name or an IPv4 address, "
                "e.g. https://msh.example.no"
            )
        return value

    @property
    def instance(self) -> str:
        """The instance name: ``instance_name``, or ``<host name>:<port>``."""
        return self.instance_name or f"{socket.gethostname()}:{self.port}"


class OwnService(_Section):
    her_id: str
    name: str = ""

    _check_her = field_validator("her_id", mode="before")(_her_id)


class IdentitySettings(_Section):
    organisation_her_id: str | None = None
    name: str = "meldingstjener development organisation"
    organisation_number: str | None = Field(default=None, pattern=r"^\d{9}$")
    services: list[OwnService] = Field(default_factory=list)

    @field_validator("organisation_her_id", mode="before")
    @classmethod
    def _check_org(cls, value: object) -> object:
        return None if value is None else _her_id(value)

    @property
    def her_ids(self) -> list[str]:
        """Every own HER-id: the organisation first, then its services."""
        own = [self.organisation_her_id] if self.organisation_her_id else []
        return own + [service.her_id for service in self.services]


# The URLs the store can open: SQLite, and PostgreSQL through psycopg 3 (the driver installed).
_DATABASE_DRIVERS = frozenset(
    {"sqlite", "sqlite+pysqlite", "postgresql", "postgres", "postgresql+psycopg"}
)


class DatabaseSettings(_Section):
    url: str | None = None
    echo: bool = False
    pool_size: int = Field(default=10, ge=1)
    partner_cache_seconds: float = Field(default=10.0, ge=0)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        # A URL of the wrong form would otherwise be found by the first command that opens
        # the store, as a traceback of SQLAlchemy's
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        if value is None:
            return None
        usage = "use sqlite:///PATH or postgresql://USER@HOST:PORT/NAME"
        try:
            parsed = make_url(value)
        except ArgumentError:
            raise ValueError(f"not a database URL; {usage}") from None
        if parsed.drivername not in _DATABASE_DRIVERS:
            raise ValueError(
                f"{parsed.drivername!r} is not a database this server uses (SQLite, PostgreSQL); "
                + usage
            )
        if parsed.get_backend_name() == "postgresql" and not parsed.database:
            raise ValueError(f"the URL names no database; {usage}")
        return value


# the key sources of [keys], each named by the prefix of its settings
KEY_SOURCES = ("signing", "encryption", "previous_encryption")


class KeyPassword(NamedTuple):
    """Where one key's password comes from, and the names of the two settings that say so
    (for an error to name the one to mend)."""

    file: Path | None
    env: str | None
    settings: tuple[str, str]


class KeySettings(_Section):
    """Our key pairs. ``password_file``/``password_env`` serve every key; a key with a
    password of its own (the previous encryption key during a renewal, which brings a new
    PKCS#12 password) names it by ``<key>_password_file`` or ``<key>_password_env``."""

    signing_pkcs12: Path | None = None
    signing_key: Path | None = None
    signing_cert: Path | None = None
    signing_password_file: Path | None = None
    signing_password_env: str | None = None
    encryption_pkcs12: Path | None = None
    encryption_key: Path | None = None
    encryption_cert: Path | None = None
    encryption_password_file: Path | None = None
    encryption_password_env: str | None = None
    previous_encryption_pkcs12: Path | None = None
    previous_encryption_key: Path | None = None
    previous_encryption_cert: Path | None = None
    previous_encryption_password_file: Path | None = None
    previous_encryption_password_env: str | None = None
    password_file: Path | None = None
    password_env: str | None = None

    @model_validator(mode="after")
    def _check_passwords(self) -> KeySettings:
        for prefix in KEY_SOURCES:
            own_file, own_env = f"{prefix}_password_file", f"{prefix}_password_env"
            given = [name for name in (own_file, own_env) if getattr(self, name) is not None]
            if len(given) == 2:
                raise ValueError(f"keys.{own_file} and keys.{own_env}: give one, not both")
            named = any(getattr(self, f"{prefix}_{kind}") is not None for kind in ("pkcs12", "key"))
            if given and not named:
                # a password left behind (the old key removed, its password not) or meant
                # for a key of another name: either way not what the operator thinks it is
                raise ValueError(
                    f"keys.{given[0]}: there is no {prefix} key (keys.{prefix}_pkcs12 or "
                    f"keys.{prefix}_key) for it to unlock"
                )
        return self

    def password_of(self, prefix: str) -> KeyPassword:
        """The password source of the key ``prefix`` (one of :data:`KEY_SOURCES`): its own
        when it has one, else the shared ``password_file``/``password_env``."""
        own = KeyPassword(
            getattr(self, f"{prefix}_password_file"),
            getattr(self, f"{prefix}_password_env"),
            (f"{prefix}_password_file", f"{prefix}_password_env"),
        )
        if own.file is not None or own.env is not None:
            return own
        return KeyPassword(self.password_file, self.password_env, ("password_file", "password_env"))


class SecuritySettings(_Section):
    trust_anchors: list[Path] = Field(default_factory=list)
    crl_files: list[Path] = Field(default_factory=list)
    revocation_policy: Literal["soft", "hard"] = "soft"
    revocation_timeout_seconds: float = Field(default=5.0, gt=0)
    revocation_cache_seconds: int = Field(default=3600, ge=0)
    allow_sha1: bool = True
    allow_3des: bool = True
    compress_payloads: bool = False
    # after a partner's signing certificate changes, how long its old one still verifies (its
    # resends signed before the change); 0 = never
    previous_signing_certificate_days: float = Field(default=7.0, ge=0)


class FormatsSettings(_Section):
    schema_dir: Path | None = None
    max_xml_bytes: int = Field(default=64 * 1024 * 1024, gt=0)

    @field_validator("schema_dir")
    @classmethod
    def _check_schema_dir(cls, value: Path | None) -> Path | None:
        # Every fagmelding is checked against the XSDs found there: a wrong path would have
        # every message refused, found only at the first one sent or received
        if value is not None and not value.is_dir():
            what = "is not a directory" if value.exists() else "does not exist"
            raise ValueError(
                f"{value} {what}; name the directory of the KITH XSDs, or leave it unset "
                "(no schema validation)"
            )
        return value


class WorkerSettings(_Section):
    count: int = Field(default=1, ge=1, le=64)
    poll_interval_seconds: float = Field(default=1.0, gt=0)
    claim_batch: int = Field(default=4, ge=1)
    lease_seconds: int = Field(default=120, ge=5)


class PartnerSettings(_Section):
    """A counterparty configured by hand (until, or beside, the address register and CPAs)."""

    her_id: str
    name: str = ""
    organisation_her_id: str | None = None
    channel: Literal["http", "smtp", "amqp"] = "http"
    endpoint: str
    signing_cert: Path
    encryption_cert: Path
    our_her_id: str | None = None
    retries: int = Field(default=5, ge=0)
    retry_interval_seconds: int = Field(default=12 * 3600, ge=1)
    persist_duration_seconds: int = Field(default=4 * 24 * 3600, ge=1)
    sync_reply: bool = False
    auto_apprec: bool = False

    _check_her = field_validator("her_id", mode="before")(_her_id)

    @field_validator("organisation_her_id", "our_her_id", mode="before")
    @classmethod
    def _check_optional_her(cls, value: object) -> object:
        return None if value is None else _her_id(value)


# what a [[partners]] table says of the party itself, stored once per partner HER-id
_PARTY_KEYS = ("organisation_her_id", "signing_cert", "encryption_cert")


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_lines: bool = False


Security = Literal["starttls", "tls", "none"]


class SmtpSettings(_Section):
    """Sending by mail (the EDI-over-SMTP channel). Not configured while ``host`` is unset.

    Never a password in the file: ``password_file`` or ``password_env`` names where it is.
    """

    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    security: Security = "starttls"
    username: str | None = None
    password_file: Path | None = None
    password_env: str | None = None
    edi_address: str | None = None
    timeout_seconds: float = Field(default=60.0, gt=0)
    max_mail_bytes: int = Field(default=51_200_000, gt=0)
    ca_file: Path | None = None
    test_domains: list[str] = Field(default_factory=lambda: ["testedi.nhn.no", "samsvar.nhn.no"])
    prod_domains: list[str] = Field(default_factory=lambda: ["edi.nhn.no"])

    @model_validator(mode="after")
    def _check(self) -> SmtpSettings:
        if self.host is not None and not self.edi_address:
            raise ValueError(
                "smtp.edi_address: our own EDI address (the From of our mails) is needed"
            )
        if self.password_file is not None and self.password_env is not None:
            raise ValueError("smtp: give password_file or password_env, not both")
        return self


class MailboxSettings(_Section):
    """Collecting from our own mailbox by POP3 or IMAP. Not configured while ``host`` is unset."""

    protocol: Literal["pop3", "imap"] = "imap"
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    security: Security = "tls"
    username: str | None = None
    password_file: Path | None = None
    password_env: str | None = None
    poll_interval_seconds: float = Field(default=60.0, gt=0)
    folder: str = "INBOX"
    timeout_seconds: float = Field(default=60.0, gt=0)
    ca_file: Path | None = None
    # Larger mails are left in the mailbox, unfetched, with a mail-too-large alert (the network
    # carries at most 51.2 MB; this bounds what one mail may cost the data disk).
    max_mail_bytes: int = Field(default=64 * 1024 * 1024, gt=0)

    @model_validator(mode="after")
    def _check(self) -> MailboxSettings:
        if self.host is not None and not self.username:
            raise ValueError("mailbox.username: needed to log in to the mailbox")
        if self.password_file is not None and self.password_env is not None:
            raise ValueError("mailbox: give password_file or password_env, not both")
        return self


class ApiSettings(_Section):
    """The EPJ API (EDI 2.0 shape): limits and, optionally, OAuth2/JWT bearer tokens.

    API keys of client systems live in the database (``meldingstjener clients add``). When
    ``jwt_issuer`` is set, bearer tokens from that issuer are accepted as well; their ``scope``
    claim gives the scopes and ``jwt_her_ids_claim`` the HER-ids the client may act for.
    """

    max_payload_bytes: int = Field(default=35 * 1024 * 1024, gt=0)
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_jwks_url: str | None = None
    jwt_public_key_file: Path | None = None
    jwt_her_ids_claim: str = "her_ids"
    jwt_person_claim: str = "sub"

    @model_validator(mode="after")
    def _check(self) -> ApiSettings:
        if self.jwt_issuer is None:
            return self
        # An issuer such as HelseID signs tokens for many APIs: without the audience, a token
        # meant for another API of the same issuer would be taken as one meant for us.
        if not self.jwt_audience:
            raise ValueError("api.jwt_audience: needed with jwt_issuer (the 'aud' tokens name)")
        if self.jwt_jwks_url is None and self.jwt_public_key_file is None:
            raise ValueError("api: jwt_issuer needs jwt_jwks_url or jwt_public_key_file")
        return self


class FolderSettings(_Section):
    """Folder integration: an outbox watched for fagmeldinger, an inbox we write received ones to.

    Off while ``outbox_dir`` and ``inbox_dir`` are unset. ``sent_dir`` and ``failed_dir`` default
    to ``sent/`` and ``failed/`` beside the outbox.
    """

    outbox_dir: Path | None = None
    inbox_dir: Path | None = None
    sent_dir: Path | None = None
    failed_dir: Path | None = None
    poll_interval_seconds: float = Field(default=2.0, gt=0)
    # Which of our HER-ids the folder acts for, as an API client's HER-ids bound it: the inbox
    # gets their messages, the outbox sends as them only, and AppRecs to their messages only.
    # Empty: every HER-id of ours.
    as_her_ids: list[str] = Field(default_factory=list)
    # An outbox file is taken once its size and time have stayed the same this long (seen by
    # this server between rounds): an EPJ that writes in place instead of renaming is not read
    # half-way. 0 takes a file at first sight (the EPJ renames it into place when whole).
    settle_seconds: float = Field(default=2.0, ge=0)
    # A file refused for its receiver's setup (unknown to the register, no active agreement,
    # its certificate) stays in the outbox this long, tried again every minute, before it is
    # moved to failed/: the operator may connect the partner meanwhile. 0: at once.
    hold_minutes: int = Field(default=60, ge=0)
    # The mode of the files written for the EPJ (the inbox's, the .error.txt in failed/),
    # exactly, whatever the server's umask: the EPJ reads them as a member of the group.
    file_mode: int = Field(default=0o640, ge=0, le=0o777)

    @field_validator("file_mode")
    @classmethod
    def _check_file_mode(cls, value: int) -> int:
        # a file others may write is one any user of the host may change before the EPJ reads it
        if value & 0o002:
            raise ValueError("must not let others write the files (no 0o002 bit)")
        return value

    @field_validator("as_her_ids", mode="before")
    @classmethod
    def _check_her_ids(cls, value: object) -> object:
        if isinstance(value, list):
            return [_her_id(item) for item in value]
        return value


class WebhookSettings(_Section):
    """Webhook delivery: how often to look for news, how to retry, when to give up."""

    enabled: bool = True
    poll_interval_seconds: float = Field(default=2.0, gt=0)
    timeout_seconds: float = Field(default=10.0, gt=0)
    first_retry_seconds: float = Field(default=5.0, gt=0)
    max_retry_seconds: float = Field(default=3600.0, gt=0)
    disable_after_failures: int = Field(default=10, ge=1)
    # Webhooks called at once (each one's own calls are made one after another): a receiver
    # that answers slowly holds its own webhook, not every client's.
    parallel_webhooks: int = Field(default=4, ge=1, le=64)
    # Active webhooks one client (name and credential) may have; another registration is 409.
    max_per_client: int = Field(default=10, ge=1)
    # Webhook URLs are https to public addresses (integration/webhook_targets): any API client
    # registers them, and the server would call its own loopback, the cloud's metadata service
    # or hosts inside the hospital network for it. Addresses in these networks may be called
    # all the same (an EPJ inside the network), and plain http when allow_http.
    allowed_networks: list[IPvAnyNetwork] = Field(default_factory=list)
    allow_http: bool = False
    # Deliveries sent or given up are deleted this many days after (pending ones never are).
    delivery_retention_days: int = Field(default=30, ge=1)


class AlertSettings(_Section):
    """When a deviation becomes an alert."""

    # A received message the EPJ has not taken (fetched and marked read, or written to the inbox
    # folder) after this long: the EPJ integration may have stopped.
    inbox_wait_minutes: int = Field(default=60, ge=1)
    # A received message the EPJ took and has not answered with an AppRec after this long: every
    # business message but an AppRec is to be answered, and its sender waits. 0 turns it off (a
    # year at most: an answer owed longer is no news).
    apprec_owed_hours: int = Field(default=24, ge=0, le=24 * 366)
    # How long after apprec_owed_hours a message unanswered is still counted (and listed by the
    # log's search for what the alert counts): an AppRec owed longer is no news its sender
    # waits for, and the first check after an upgrade counted years of history.
    apprec_owed_days: int = Field(default=14, ge=1, le=366)
    # This host's clock further than this from the database server's (PostgreSQL): leases and
    # deadlines are judged by each host's clock.
    clock_skew_seconds: float = Field(default=10.0, gt=0)


class HelseIdSettings(_Section):
    """The HelseID client ``serve`` uses for NHN's APIs (the address register's sync).

    The client signs in with ``private_key_jwt`` using ``key_file`` (its private key: a JWK as
    HelseID's self-service portal hands it out, or PEM) and asks for DPoP-bound tokens.
    ``audience`` defaults to the token endpoint's origin (HelseID's issuer).
    """

    token_url: str | None = None
    client_id: str | None = None
    key_file: Path | None = None
    audience: str | None = None
    dpop: bool = True

    @model_validator(mode="after")
    def _check(self) -> HelseIdSettings:
        if self.token_url is not None and (not self.client_id or self.key_file is None):
            raise ValueError("helseid: token_url needs client_id and key_file")
        if self.token_url is None and (self.client_id or self.key_file is not None):
            raise ValueError("helseid: client_id and key_file need token_url")
        return self


class RegisterSettings(_Section):
    """Keeping the local copy of the address register current: ``serve`` syncs it from the
    CommunicationParty API every ``sync_minutes`` (off while ``url`` is unset), with the
    ``[helseid]`` client (or, without one, the token in ``MELDINGSTJENER_AR_TOKEN``)."""

    url: str | None = None
    # NHN's scope for the CommunicationParty API with DPoP-bound tokens (its documentation,
    # 2025); a client without DPoP needs the scope its HelseID client was granted instead.
    scope: str = "nhn:cp-api/access-v2-dpop"
    sync_minutes: int = Field(default=15, ge=1)
    # Syncs that failed in a row before a register-sync-failed alert (one failure is often
    # the network; several mean certificates and addresses are getting out of date).
    alert_after_failures: int = Field(default=3, ge=1)
    # The most of one answer of the register that is read (decompressed): a register (or a
    # proxy in front of it) that answers more gets the sync stopped, not the memory filled.
    max_answer_mb: int = Field(default=64, ge=1)


# The least [retention] payload_days but 0 (kept): see engine/retention.py
PAYLOAD_DAYS_FLOOR = 30
# The least [retention] audit_days but 0 (kept): the database refuses to delete a newer row
# (migration 0028's permit trigger holds the same 30 days)
AUDIT_DAYS_FLOOR = 30
# The most of any [retention] *_days: a hundred years (a cutoff much further back than year 1
# cannot be reckoned at all)
RETENTION_DAYS_CEILING = 36_500


class RetentionSettings(_Section):
    """How long what the server stores is kept (``serve``'s daily ``retention`` job,
    ``meldingstjener retention``). A message is only ever touched once it is settled (see
    :mod:`meldingstjener.engine.retention`); 0 keeps for ever."""

    # The payload files (the business document, decrypted on the receiving side, and the wire
    # form) of a settled message, this many days after it settled: its row, events and receipts
    # stay, so the help desk still sees what became of it. 0: kept for ever; else at least
    # PAYLOAD_DAYS_FLOOR (a misaddressed message reported after its AppRec needs the document).
    payload_days: int = Field(default=90, ge=0)
    # Whole settled messages (row, events, receipts, jobs, content keys; their alerts stay,
    # without the message), this many days after they settled. At least the longest
    # PersistDuration of the agreements plus a day, checked at each run against the store's
    # agreements: the row is how a partner's resend is known as a duplicate; and at least
    # PAYLOAD_DAYS_FLOOR, as the whole message takes its content with it. 0: kept for ever.
    message_days: int = Field(default=0, ge=0)
    # The API's audit log (who read or changed which message), rows older than this many days.
    # 0: kept for ever, the default: evidence goes only when the operator sets how long the
    # organisation keeps its access logs; else at least AUDIT_DAYS_FLOOR.
    audit_days: int = Field(default=0, ge=0)

    @field_validator("payload_days", "message_days", "audit_days")
    @classmethod
    def _days_ceiling(cls, days: int, info: ValidationInfo) -> int:
        if days > RETENTION_DAYS_CEILING:
            raise ValueError(
                f"{info.field_name} = {days} is more than {RETENTION_DAYS_CEILING} days (a "
                "hundred years): set 0 to keep for ever"
            )
        return days

    @field_validator("audit_days")
    @classmethod
    def _audit_days_floor(cls, days: int) -> int:
        if 0 < days < AUDIT_DAYS_FLOOR:
            raise ValueError(
                f"audit_days = {days} would delete the audit log's rows of the last month, "
                f"which the database refuses: set at least {AUDIT_DAYS_FLOOR}, or 0 to keep them"
            )
        return days

    @field_validator("payload_days", "message_days")
    @classmethod
    def _content_days_floor(cls, days: int, info: ValidationInfo) -> int:
        # a whole message deleted takes its content too: the one floor holds for both
        if 0 < days < PAYLOAD_DAYS_FLOOR:
            raise ValueError(
                f"{info.field_name} = {days} would delete the content of received messages a "
                "clinician may still report as misaddressed (which answers the sender from the "
                f"document): set at least {PAYLOAD_DAYS_FLOOR}, or 0 to keep it"
            )
        return days


class Settings(BaseSettings):
    """All settings. Construct through :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix="MELDINGSTJENER_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    data_dir: Path = Path("meldingstjener-data")
    environment: Environment = "test"
    server: ServerSettings = ServerSettings()
    identity: IdentitySettings = IdentitySettings()
    database: DatabaseSettings = DatabaseSettings()
    keys: KeySettings = KeySettings()
    security: SecuritySettings = SecuritySettings()
    formats: FormatsSettings = FormatsSettings()
    workers: WorkerSettings = WorkerSettings()
    logging: LoggingSettings = LoggingSettings()
    partners: list[PartnerSettings] = Field(default_factory=list)
    smtp: SmtpSettings = SmtpSettings()
    mailbox: MailboxSettings = MailboxSettings()
    api: ApiSettings = ApiSettings()
    folder: FolderSettings = FolderSettings()
    webhooks: WebhookSettings = WebhookSettings()
    alerts: AlertSettings = AlertSettings()
    helseid: HelseIdSettings = HelseIdSettings()
    address_register: RegisterSettings = RegisterSettings()
    retention: RetentionSettings = RetentionSettings()

    @model_validator(mode="after")
    def _no_clear_text_passwords_in_production(self) -> Settings:
        # "none" is for local test servers: in production it sends the account's password
        # over the network as it is
        for name, section in (("smtp", self.smtp), ("mailbox", self.mailbox)):
            if (
                self.environment == "prod"
                and section.host is not None
                and section.security == "none"
                and section.username
            ):
                raise ValueError(
                    f"{name}.security: 'none' would send the password unencrypted; a prod "
                    "server uses starttls or tls"
                )
        return self

    @model_validator(mode="after")
    def _each_partner_once(self) -> Settings:
        # The store keeps one agreement per (our HER-id, partner) and one party per HER-id: a
        # second table for the pair (a copy-paste, the old address left in) silently won, and
        # a partner with one of our own HER-ids would overwrite our own party.
        # One partner under two HER-ids of ours is two tables, but the party (its certificates,
        # its organisation) is stored once: tables that disagree on it had the last one win.
        own = set(self.identity.her_ids)
        first: dict[tuple[str | None, str], int] = {}
        party_of: dict[str, int] = {}
        for number, partner in enumerate(self.partners):
            if partner.her_id in own:
                raise ValueError(
                    f"partners[{number}].her_id: {partner.her_id} is one of our own HER-ids "
                    "([identity])"
                )
            pair = (self.our_her_id_for(partner), partner.her_id)
            if pair in first:
                raise ValueError(
                    f"partners[{number}].her_id: {partner.her_id} is also partners[{first[pair]}]"
                )
            first[pair] = number
            earlier = party_of.setdefault(partner.her_id, number)
            for key in _PARTY_KEYS:
                if getattr(partner, key) != getattr(self.partners[earlier], key):
                    raise ValueError(
                        f"partners[{number}].{key}: partner {partner.her_id} is also "
                        f"partners[{earlier}], with another {key}; the party is one, whichever "
                        "HER-id of ours it is a partner of"
                    )
        return self

    def our_her_id_for(self, partner: PartnerSettings) -> str | None:
        """The HER-id of ours a ``[[partners]]`` agreement is made for: its ``our_her_id``,
        or the organisation's (or, without one, our first service's)."""
        own = self.identity.her_ids
        return partner.our_her_id or (own[0] if own else None)

    @property
    def database_url(self) -> str:
        if self.database.url:
            return self.database.url
        return f"sqlite:///{(self.data_dir / 'meldingstjener.db').resolve()}"

    @property
    def payload_dir(self) -> Path:
        return self.data_dir / "payloads"

    @property
    def dev_pki_dir(self) -> Path:
        return self.data_dir / "dev-pki"


def _format_validation_error(exc: ValidationError, source: str) -> str:
    lines = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"])
        problem = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            problem = "unknown key (see config.example.toml for the keys that exist)"
        given = _without_password(error.get("input"))
        shown = "" if isinstance(given, dict | list) or given is None else f" (got {given!r})"
        # a check of the whole (a model validator) names its keys in its message
        lines.append(f"  {key}: {problem}{shown}" if key else f"  {problem}{shown}")
    return f"invalid configuration ({source}):\n" + "\n".join(lines)


def _without_password(value: object) -> object:
    """A value as an error may show it: a URL's password hidden (a database URL may carry
    one), or nothing when the URL cannot be read well enough to hide it."""
    if not (isinstance(value, str) and "://" in value and "@" in value):
        return value
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(value).render_as_string(hide_password=True)
    except ArgumentError:
        return None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"configuration file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"configuration file {path} cannot be read: {exc.strerror}") from None


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Read the TOML file (optional), apply environment and explicit overrides, validate.

    ``overrides`` are command-line options; ``None`` values are ignored. ``server_port`` is
    accepted as a shortcut for ``server={"port": ...}``.
    """
    file_values = _read_toml(config_file) if config_file is not None else {}
    given = {key: value for key, value in overrides.items() if value is not None}
    if "server_port" in given:
        given.setdefault("server", {})["port"] = given.pop("server_port")

    class _FromFile(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings, env_settings, _DictSource(settings_cls, file_values))

    source = f"file {config_file}" if config_file else "defaults and environment"
    _refuse_one_underscore(os.environ)
    try:
        loaded = _FromFile(**given)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None
    return Settings.model_validate(loaded.model_dump())


# Sections whose one-underscore variables mean something else: MELDINGSTJENER_HELSEID_TOKEN_URL,
# _CLIENT_ID, _KEY_FILE, _AUDIENCE are the options of `ar sync` and `partners add` (README).
_ONE_UNDERSCORE_DOCUMENTED = frozenset({"helseid"})


def _refuse_one_underscore(environ: Mapping[str, str]) -> None:
    """A section's key set with one underscore (``MELDINGSTJENER_DATABASE_URL``) is not read,
    and was ignored without a word: a server meant for PostgreSQL ran on a new SQLite file. Such
    a variable, one that names a key of a section, is refused; others (a ``password_env`` such
    as ``MELDINGSTJENER_SMTP_PASSWORD``, the options' variables) are left alone."""
    problems = []
    for name in sorted(environ):
        upper = name.upper()
        for section, field in Settings.model_fields.items():
            model = field.annotation
            prefix = f"MELDINGSTJENER_{section.upper()}_"
            if (
                section in _ONE_UNDERSCORE_DOCUMENTED
                or not (isinstance(model, type) and issubclass(model, BaseModel))
                or not upper.startswith(prefix)
            ):
                continue
            key = upper.removeprefix(prefix).lower()
            if key in model.model_fields:
                problems.append(
                    f"  {name}: not read; a key in a section takes two underscores: "
                    f"{prefix}_{key.upper()}"
                )
    if problems:
        raise ConfigError("invalid configuration (environment):\n" + "\n".join(problems))


class _DictSource(PydanticBaseSettingsSource):
    """Values read from the TOML file, lowest precedence above defaults."""

    def __init__(self, settings_cls: type[BaseSettings], values: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._values = values

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._values)
