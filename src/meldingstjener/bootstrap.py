"""The one place that wires configuration to concrete adapters: store, keys, transports, engine."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError

from meldingstjener.config import ConfigError, KeySettings, Settings
from meldingstjener.store.database import Database
from meldingstjener.store.identity import CheckedPayloadStore
from meldingstjener.store.migrate import (
    SchemaNewer,
    current_revision,
    head_revision,
    known_revisions,
    upgrade,
)
from meldingstjener.store.opening import (
    StoreUnavailable,
    database_failed,
    no_store,
    payloads_failed,
    reason,
    schema_newer,
    schema_older,
    sqlite_file,
)
from meldingstjener.store.uow import Store

if TYPE_CHECKING:
    from meldingstjener.engine.context import EngineContext, OwnKeys, Policy
    from meldingstjener.engine.register_sync import RegisterSync
    from meldingstjener.registry.auth import TokenProvider
    from meldingstjener.security.certs import Usage
    from meldingstjener.security.keystore import KeyPair, KeySource
    from meldingstjener.security.validation import CertificateValidator


def open_store(settings: Settings, *, migrate: bool = True, create: bool = True) -> Store:
    """Open the database and payload store; bring the schema up to date unless told not to.

    ``create=False`` is for commands that read or change what is stored: where there is no
    store yet (no SQLite file, no tables), they raise :class:`StoreUnavailable` (``missing``)
    rather than make an empty one and report that nothing is there. It is raised too when the
    database cannot be reached or written, or the payload directory cannot be made or
    written.

    The schema's revision is judged here, for every command: one this version's migrations do
    not know is a newer version's (StoreUnavailable, never Alembic's traceback). Without
    ``migrate`` (the commands that neither make nor upgrade a store: a help desk's newer CLI
    must not migrate the store under the servers) a schema older than this version's is
    refused too, as the code reads the newest schema only."""
    url = settings.database_url
    file = sqlite_file(url)
    if not create and file is not None and not file.is_file():
        raise no_store(url)  # before Database(), which makes the file's directory
    try:
        database = Database(
            url,
            echo=settings.database.echo,
            pool_size=settings.database.pool_size,
            instance=settings.server.instance,
        )
    except (SQLAlchemyError, OSError) as exc:  # no driver, no directory for the file
        raise database_failed(url, exc) from None
    try:
        revision, head = current_revision(database), head_revision()
        refused = None
        if revision is None and not (create and migrate):
            refused = no_store(url)
        elif revision is not None and revision not in known_revisions():
            refused = schema_newer(revision, head)
        elif revision is not None and revision != head and not migrate:
            refused = schema_older(revision, head)
        if refused is not None:
            database.dispose()
            raise refused
        if migrate:
            upgrade(database)
    except SchemaNewer as newer:  # migrated by a newer version while this one waited
        database.dispose()
        raise schema_newer(newer.revision, head) from None
    except (OperationalError, InterfaceError, OSError) as exc:  # unreachable, refused, unwritable
        raise database_failed(url, exc) from None
    # any other error is a migration that failed on what is stored: its traceback is the
    # report, not a line saying the database cannot be opened (and exit 3, "try again later")
    try:
        # the directory is checked to be this database's before a payload is touched
        payloads = CheckedPayloadStore(settings.payload_dir, database)
    except OSError as exc:
        database.dispose()
        raise payloads_failed(settings.payload_dir, exc) from None
    # root may write anywhere; another user is told now, not at the first message stored
    if create and not os.access(settings.payload_dir, os.W_OK | os.X_OK):
        database.dispose()
        raise payloads_failed(settings.payload_dir, "permission denied")
    return Store(database, payloads)


def _source(keys: KeySettings, prefix: str) -> KeySource | None:
    from meldingstjener.security.keystore import KeySource

    pkcs12: Path | None = getattr(keys, f"{prefix}_pkcs12")
    key: Path | None = getattr(keys, f"{prefix}_key")
    cert: Path | None = getattr(keys, f"{prefix}_cert")
    password_file, password_env, _ = keys.password_of(prefix)
    if pkcs12 is not None:
        return KeySource.pkcs12(pkcs12, password_file=password_file, password_env=password_env)
    if key is not None and cert is not None:
        return KeySource.pem(key, cert, password_file=password_file, password_env=password_env)
    if key is not None or cert is not None:
        raise ConfigError(f"keys.{prefix}_key and keys.{prefix}_cert must be given together")
    return None


def load_own_keys(settings: Settings) -> OwnKeys:
    """Our keys from ``[keys]``; in the test environment, development keys when none are set."""
    from meldingstjener.engine.context import OwnKeys
    from meldingstjener.security.devpki import init_pki, load_dev_party
    from meldingstjener.security.keystore import KeyStore

    signing = _source(settings.keys, "signing")
    encryption = _source(settings.keys, "encryption")
    previous = _source(settings.keys, "previous_encryption")
    if signing is not None and encryption is not None:
        store = KeyStore(
            signing=_key_pair(signing, "signing", "signing", settings.keys),
            encryption=_key_pair(encryption, "encryption", "encryption", settings.keys),
            previous_encryption=(
                None
                if previous is None
                else _key_pair(previous, "previous_encryption", "encryption", settings.keys)
            ),
        )
        return OwnKeys(
            store.signing_key,
            store.signing_certificate,
            store.encryption_certificate,
            store.decryption_candidates,
            sources={role: _key_file(settings.keys, role) for role in ("signing", "encryption")},
        )
    if signing is not None or encryption is not None:
        raise ConfigError("[keys]: give both the signing and the encryption key, or neither")
    if settings.environment != "test":
        raise ConfigError(
            f"[keys]: environment {settings.environment} needs real enterprise certificates; "
            "development keys are only made for the test environment"
        )
    her_id = _organisation_her_id(settings)
    try:
        init_pki(settings.dev_pki_dir, [her_id], names={her_id: settings.identity.name})
    except OSError as exc:
        raise StoreUnavailable(
            f"cannot write the development keys in {settings.dev_pki_dir}: {reason(exc)}"
        ) from None
    party = load_dev_party(settings.dev_pki_dir, her_id)
    made = f"a development key in {settings.dev_pki_dir}"
    return OwnKeys(
        party.signing.key,
        party.signing.certificate,
        party.encryption.certificate,
        [(party.encryption.key, party.encryption.certificate)],
        sources={"signing": made, "encryption": made},
    )


def _key_file(keys: KeySettings, prefix: str) -> str:
    """Where the ``[keys]`` pair ``prefix`` comes from, as an operator finds it: the file, and
    the setting that names it."""
    for kind in ("pkcs12", "key"):
        path = getattr(keys, f"{prefix}_{kind}")
        if path is not None:
            return f"key file {path}, from [keys] {prefix}_{kind}"
    return f"[keys] {prefix}"


def _key_pair(source: KeySource, prefix: str, usage: Usage, keys: KeySettings) -> KeyPair:
    """One of our key pairs; a file that is missing, unreadable, of another key or locked with
    another password is a configuration error naming the ``[keys]`` key to mend."""
    from meldingstjener.security.keystore import (
        KeyStoreError,
        PasswordMissing,
        WrongPassword,
        load_key_pair,
    )

    try:
        return load_key_pair(source, usage=usage)
    except KeyStoreError as exc:
        if isinstance(exc, PasswordMissing | WrongPassword):
            file_setting, env_setting = keys.password_of(prefix).settings
            given = [
                name
                for name, value in (
                    (file_setting, source.password_file),
                    (env_setting, source.password_env),
                )
                if value is not None
            ]
            key = " and ".join(f"keys.{name}" for name in given) or f"keys.{file_setting}"
            if prefix == "previous_encryption" and file_setting == "password_file":
                # the shared password is the new keys': changing it would break them, and the
                # old key (renewed) often keeps the old PKCS#12 password
                key += f" (or give it its own: keys.{prefix}_password_file)"
        elif source.cert_path is None:
            key = f"keys.{prefix}_pkcs12"
        elif str(source.cert_path) in exc.message:  # the certificate file is the one at fault
            key = f"keys.{prefix}_cert"
        else:
            key = f"keys.{prefix}_key"
        raise ConfigError(f"{key}: {exc.message} ({exc.code})") from None


def _organisation_her_id(settings: Settings) -> str:
    her_ids = settings.identity.her_ids
    if not her_ids:
        raise ConfigError(
            "identity.organisation_her_id: not set; the server must know its own HER-id(s)"
        )
    return her_ids[0]


def build_validator(
    settings: Settings, *, clock: Callable[[], datetime]
) -> CertificateValidator | None:
    """The certificate validator for ``[security]``; None without trust anchors."""
    from cryptography import x509

    from meldingstjener.security.certs import CertificateLoadError, load_certificates
    from meldingstjener.security.validation import CertificateValidator

    security = settings.security
    if not security.trust_anchors:
        return None
    anchors = []
    for number, path in enumerate(security.trust_anchors):
        try:
            anchors += load_certificates(path)
        except CertificateLoadError as exc:
            raise ConfigError(f"security.trust_anchors[{number}] ({path}): {exc.message}") from None
    crls = []
    for number, path in enumerate(security.crl_files):
        try:
            data = path.read_bytes()
            crls.append(
                x509.load_pem_x509_crl(data)
                if b"-----BEGIN" in data
                else x509.load_der_x509_crl(data)
            )
        except OSError as exc:
            raise ConfigError(
                f"security.crl_files[{number}]: cannot read {path}: {exc.strerror}"
            ) from None
        except ValueError:
            raise ConfigError(
                f"security.crl_files[{number}]: {path} holds no CRL (PEM or DER)"
            ) from None
    return CertificateValidator(
        anchors,
        crls=crls,
        revocation_policy=security.revocation_policy,
        timeout=security.revocation_timeout_seconds,
        cache_seconds=security.revocation_cache_seconds,
        clock=clock,
    )


def message_id_host(settings: Settings) -> str:
    if settings.server.public_url:
        host = urlparse(settings.server.public_url).hostname
        if host:
            return host
    return f"msh-{_organisation_her_id(settings)}.meldingstjener.local"


def build_policy(settings: Settings) -> Policy:
    """The engine's policy of ``settings`` (the CLI's commands that judge as the engine does,
    ``log --apprec-owed``, read it too)."""
    from meldingstjener.engine.context import Policy

    return Policy(
        environment=settings.environment,
        schema_dir=settings.formats.schema_dir,
        allow_sha1=settings.security.allow_sha1,
        allow_3des=settings.security.allow_3des,
        compress_payloads=settings.security.compress_payloads,
        max_xml_bytes=settings.formats.max_xml_bytes,
        inbox_wait=timedelta(minutes=settings.alerts.inbox_wait_minutes),
        apprec_owed=timedelta(hours=settings.alerts.apprec_owed_hours) or None,
        apprec_owed_look_back=timedelta(days=settings.alerts.apprec_owed_days),
        previous_signing_grace=timedelta(days=settings.security.previous_signing_certificate_days),
        clock_skew=timedelta(seconds=settings.alerts.clock_skew_seconds),
        retention=settings.retention,
    )


def build_engine(
    settings: Settings,
    *,
    store: Store | None = None,
    clock: Callable[[], datetime] | None = None,
) -> EngineContext:
    """A ready engine context: store migrated, configured partners synced, keys loaded."""
    from meldingstjener.engine.context import EngineContext, utc_now
    from meldingstjener.engine.directory import PartyDirectory, sync_configured_partners
    from meldingstjener.engine.mail_channel import build_smtp_transport
    from meldingstjener.transport.http import HttpTransport

    store = store or open_store(settings)
    own = settings.identity.her_ids
    keys = load_own_keys(settings)
    sync_configured_partners(store, settings, at=(clock or utc_now)())
    context = EngineContext(
        store=store,
        own_her_ids=frozenset(own),
        organisation_her_id=_organisation_her_id(settings),
        keys=keys,
        directory=PartyDirectory(store, own, cache_seconds=settings.database.partner_cache_seconds),
        transports={"http": HttpTransport()},
        policy=build_policy(settings),
        clock=clock or utc_now,
        host=message_id_host(settings),
        validator=build_validator(settings, clock=clock or utc_now),
        instance=settings.server.instance,
    )
    smtp = build_smtp_transport(settings, host=context.host)
    if smtp is not None:
        context.transports = {**context.transports, "smtp": smtp}
    return context


def build_register_sync(settings: Settings) -> RegisterSync | None:
    """How ``serve`` syncs the address register: None while ``[address_register] url`` is
    unset. Without a ``[helseid]`` client or ``MELDINGSTJENER_AR_TOKEN`` it cannot sign in:
    a configuration error now rather than a failed sync every turn."""
    from meldingstjener.engine.register_sync import RegisterSync

    register = settings.address_register
    if register.url is None:
        return None
    if settings.helseid.token_url is None and not os.environ.get("MELDINGSTJENER_AR_TOKEN"):
        raise ConfigError(
            "address_register.url: the register needs a HelseID client ([helseid] token_url, "
            "client_id, key_file) or a token in MELDINGSTJENER_AR_TOKEN"
        )
    return RegisterSync(
        url=register.url,
        tokens=register_tokens(settings),
        every=timedelta(minutes=register.sync_minutes),
        alert_after_failures=register.alert_after_failures,
        run_seconds=min(30.0, settings.workers.lease_seconds / 4),
        max_answer_bytes=register.max_answer_mb * 1024 * 1024,
    )


def register_tokens(
    settings: Settings,
    *,
    scope: str | None = None,
    audience: str | None = None,
    dpop: bool | None = None,
) -> TokenProvider:
    """The configured ``[helseid]`` client with the register's scope (or the ones given);
    without one, the token in ``MELDINGSTJENER_AR_TOKEN``."""
    from meldingstjener.registry.auth import StaticToken, helseid_token_provider
    from meldingstjener.registry.helseid import ClientKeyError

    helseid = settings.helseid
    if helseid.token_url is None or helseid.client_id is None:
        return StaticToken(os.environ.get("MELDINGSTJENER_AR_TOKEN", ""))
    try:
        return helseid_token_provider(
            helseid.token_url,
            helseid.client_id,
            scope=scope or settings.address_register.scope,
            key_file=helseid.key_file,
            audience=audience or helseid.audience,
            dpop=helseid.dpop if dpop is None else dpop,
        )
    except ClientKeyError as exc:
        raise ConfigError(f"helseid.key_file: {exc}") from None
