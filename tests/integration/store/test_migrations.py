"""The migrations build the schema the model declares, on both backends, and the newest one goes
down and up again cleanly."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import select, text

from meldingstjener.store.migrate import (
    SchemaNewer,
    current_revision,
    downgrade,
    head_revision,
    upgrade,
)
from meldingstjener.store.tables import AgreementRow, Base, WebhookRow
from meldingstjener.store.types import utcnow
from meldingstjener.store.uow import Store


def differences(store: Store) -> list[Any]:
    """What Alembic finds the schema and the model differ in; it cannot read an index of an
    expression on SQLite (``lower(msg_id)``, 0033), which :func:`indexes_missing` checks."""
    with store.database.engine.connect() as connection, warnings.catch_warnings():
        warnings.filterwarnings("ignore", "autogenerate skipping .*expression-based index")
        warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression-based")
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))


def indexes_missing(store: Store) -> set[str]:
    """The names of the model's indexes the schema lacks, by the database's own catalogue."""
    declared = {
        str(index.name) for table in Base.metadata.tables.values() for index in table.indexes
    }
    catalogue = (
        "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
        if store.database.is_postgresql
        else "SELECT name FROM sqlite_master WHERE type = 'index'"
    )
    with store.database.engine.connect() as connection:
        return declared - set(connection.execute(text(catalogue)).scalars())


def test_the_migrated_schema_is_the_models(own_database: Store) -> None:
    assert current_revision(own_database.database) == head_revision()
    assert differences(own_database) == []
    assert indexes_missing(own_database) == set()


def test_the_newest_migration_goes_down_and_up_again(own_database: Store) -> None:
    database = own_database.database
    with database.engine.begin() as connection:  # rows a table rebuild must not lose
        connection.execute(
            text(
                "INSERT INTO webhooks (id, client_name, url, secret, events, her_ids, active,"
                " consecutive_failures, created_at) VALUES (1, 'epj', 'http://epj/hook', 's',"
                " '[]', '[]', true, 0, CURRENT_TIMESTAMP)"
            )
        )
        connection.execute(
            text(
                "INSERT INTO webhook_deliveries (webhook_id, delivery_id, event_key, event_type,"
                " body, state, attempts, due_at, created_at) VALUES (1, 'told-before', 'k',"
                " 'alert', '{}', 'pending', 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            )
        )
    with own_database.unit_of_work() as uow:  # an agreement with an end (0013)
        uow.agreements.add(AgreementRow(our_her_id="1", counterparty_her_id="2", valid_to=utcnow()))
        uow.commit()
    downgrade(database, "-1")
    assert current_revision(database) != head_revision()
    # the model is ahead of the schema now (0033's indexes of lower(...): SQLite's catalogue)
    assert differences(own_database) != [] or indexes_missing(own_database) != set()
    assert _job_ids_never_reused(own_database)  # a SQLite table rebuild keeps AUTOINCREMENT
    assert _deliveries(own_database) == 1
    assert _count(own_database, "partner_agreements") == 1
    upgrade(database)
    assert differences(own_database) == []
    assert indexes_missing(own_database) == set()
    assert _job_ids_never_reused(own_database)
    assert _deliveries(own_database) == 1
    assert _count(own_database, "partner_agreements") == 1
    # 0026 (indexes) leaves the rows as they were; 0024's ids: test_migration_delivery_ids.py
    assert _delivery_ids(own_database) == ["told-before"]


def _delivery_ids(store: Store) -> list[str]:
    with store.database.engine.connect() as connection:
        rows = connection.execute(text("SELECT delivery_id FROM webhook_deliveries"))
        return list(rows.scalars())


def _count(store: Store, table: str) -> int:
    with store.database.engine.connect() as connection:
        return int(connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def _deliveries(store: Store) -> int:
    with store.database.engine.connect() as connection:
        return int(connection.execute(text("SELECT count(*) FROM webhook_deliveries")).scalar_one())


def _job_ids_never_reused(store: Store) -> bool:
    """SQLite keeps a deleted job's id from new jobs only with AUTOINCREMENT (migration 0005),
    which the model comparison does not see; PostgreSQL's sequences never reuse ids."""
    if store.database.dialect != "sqlite":
        return True
    with store.database.engine.connect() as connection:
        sql = connection.exec_driver_sql(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'jobs'"
        ).scalar_one()
    return "AUTOINCREMENT" in str(sql)


def test_going_down_past_the_folder_file_states_lets_staged_messages_be_written_anew(
    own_database: Store,
) -> None:
    # Before 0020 an inbox row says the message's files are written: a staging row kept would
    # have the code before mark its message delivered while its files are only temporaries
    # (which it removes after an hour). Down, it is deleted; the outbox's rows are kept.
    database = own_database.database
    with database.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO folder_files (kind, key, file_name, message_id, outcome, at,"
                " content_sha256, outbox_tag, staged_as) VALUES ('outbox', 'k1', 'n1', NULL,"
                " 'sent', CURRENT_TIMESTAMP, 'abc', 'tag', NULL), ('inbox', 'm1', 'm1.xml', 'm1',"
                " 'staging', CURRENT_TIMESTAMP, NULL, NULL, '.m1.json.a.tmp/.m1.xml.b.tmp'),"
                " ('inbox', 'm2', 'm2.xml', 'm2', 'written', CURRENT_TIMESTAMP, NULL, NULL, NULL)"
            )
        )
    downgrade(database, "0019")
    assert _folder_files(own_database) == [("inbox", "m2"), ("outbox", "k1")]
    upgrade(database)
    assert differences(own_database) == []
    assert _folder_files(own_database) == [("inbox", "m2"), ("outbox", "k1")]


def _folder_files(store: Store) -> list[tuple[str, str]]:
    with store.database.engine.connect() as connection:
        rows = connection.execute(text("SELECT kind, key FROM folder_files ORDER BY kind, key"))
        return [(kind, key) for kind, key in rows]


def test_webhooks_older_than_their_credential_column_are_given_the_right_one(
    own_database: Store,
) -> None:
    # Before 0011 a webhook did not say how its client proved itself. A name without an
    # API-key client (they are revoked, never deleted) was a JWT client's: taken for a key
    # client's, its webhooks were neither listed nor deletable by their owner.
    database = own_database.database
    downgrade(database, "0010")
    with database.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO api_clients (id, name, key_hash, scopes, her_ids, created_at)"
                " VALUES (1, 'epj-key', 'h', '[]', '[]', CURRENT_TIMESTAMP)"
            )
        )
        for number, name in ((1, "epj-key"), (2, "epj-helseid")):
            connection.execute(
                text(
                    "INSERT INTO webhooks (id, client_name, url, secret, events, her_ids, active,"
                    " consecutive_failures, created_at) VALUES (:id, :name, 'http://epj/hook',"
                    " 's', '[]', '[]', true, 0, CURRENT_TIMESTAMP)"
                ),
                {"id": number, "name": name},
            )
    upgrade(database)
    with database.engine.connect() as connection:
        found = dict(connection.execute(text("SELECT client_name, credential FROM webhooks")).all())
    assert found == {"epj-key": "api-key", "epj-helseid": "jwt"}


def test_webhooks_older_than_their_scopes_are_given_their_key_clients(
    own_database: Store,
) -> None:
    # Before 0015 a webhook did not keep its client's scopes, and told a send-only client of
    # the messages it received. An API-key client's scopes never change: its webhooks get them.
    # A JWT client's were never stored anywhere: its webhooks get none (not checked).
    database = own_database.database
    downgrade(database, "0014")
    with database.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO api_clients (id, name, key_hash, scopes, her_ids, created_at)"
                " VALUES (1, 'epj-key', 'h', '[\"send\"]', '[]', CURRENT_TIMESTAMP)"
            )
        )
        for number, name, credential in ((1, "epj-key", "api-key"), (2, "epj-helseid", "jwt")):
            connection.execute(
                text(
                    "INSERT INTO webhooks (id, client_name, credential, url, secret, events,"
                    " her_ids, active, consecutive_failures, created_at) VALUES (:id, :name,"
                    " :credential, 'http://epj/hook', 's', '[]', '[]', true, 0, CURRENT_TIMESTAMP)"
                ),
                {"id": number, "name": name, "credential": credential},
            )
    upgrade(database)
    with own_database.unit_of_work() as uow:
        found = {row.client_name: row.scopes for row in uow.session.scalars(select(WebhookRow))}
    assert found == {"epj-key": ["send"], "epj-helseid": None}


def test_idempotency_keys_stored_before_their_scope_are_found_after_the_upgrade(
    own_database: Store,
) -> None:
    # Keys were "<client>:<key>" until 0017. An EPJ whose POST the upgrade's restart cut off
    # retries it with the same key: not found in its old form, the message was made twice.
    from meldingstjener.api.auth import Principal
    from meldingstjener.api.idempotency import scoped_key
    from meldingstjener.store.tables import Credential

    database = own_database.database
    downgrade(database, "0016")
    stored = {  # message id: (client, key as stored before)
        "m-key": ("epj-key", "epj-key:retry:1"),
        "m-jwt": ("epj-helseid", "epj-helseid:a:b"),
        "m-folder": ("folder:f00d", "folder:f00d"),
    }
    with database.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO api_clients (id, name, key_hash, scopes, her_ids, created_at)"
                " VALUES (1, 'epj-key', 'h', '[]', '[]', CURRENT_TIMESTAMP)"
            )
        )
        for message_id, (client, key) in stored.items():
            connection.execute(
                text(
                    "INSERT INTO messages (id, direction, status, attempts, client_id,"
                    " idempotency_key, created_at, updated_at, status_changed_at) VALUES (:id,"
                    " 'out', 'sent', 1, :client, :key, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP,"
                    " CURRENT_TIMESTAMP)"
                ),
                {"id": message_id, "client": client, "key": key},
            )
    upgrade(database)
    with database.engine.connect() as connection:
        found = dict(connection.execute(text("SELECT id, idempotency_key FROM messages")).all())

    def client(name: str, credential: str) -> Principal:
        return Principal(name, None, frozenset(), frozenset(), credential=credential)

    assert found == {
        "m-key": scoped_key(client("epj-key", Credential.API_KEY), "retry:1"),
        "m-jwt": scoped_key(client("epj-helseid", Credential.JWT), "a:b"),
        "m-folder": "folder:f00d",
    }


def test_going_down_past_the_message_columns_keeps_the_message_log(own_database: Store) -> None:
    # SQLite drops a column in a batch by rebuilding the table: dropping the old messages
    # table cascaded to every table that refers to it, and the message log was gone.
    database = own_database.database
    with database.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO messages (id, direction, status, attempts, created_at, updated_at,"
                " status_changed_at) VALUES ('m1', 'out', 'sent', 1, CURRENT_TIMESTAMP,"
                " CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            )
        )
        connection.execute(
            text(
                "INSERT INTO message_events (message_id, at, kind, actor) VALUES ('m1',"
                " CURRENT_TIMESTAMP, 'status', 't')"
            )
        )
    downgrade(database, "0002")
    assert (_count(own_database, "messages"), _count(own_database, "message_events")) == (1, 1)
    upgrade(database)
    assert differences(own_database) == []
    assert (_count(own_database, "messages"), _count(own_database, "message_events")) == (1, 1)


def test_going_down_past_the_webhook_scopes_keeps_the_deliveries(own_database: Store) -> None:
    # 0015's downgrade drops two webhook columns: SQLite rebuilds the table, and dropping the
    # old one cascades to webhook_deliveries (ON DELETE CASCADE). They are kept aside and put
    # back (kept_deliveries), a path no test went with a delivery present.
    database = own_database.database
    with database.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO webhooks (id, client_name, credential, url, secret, events, her_ids,"
                " scopes, issuer, active, consecutive_failures, created_at) VALUES (1, 'epj',"
                " 'jwt', 'https://epj/hook', 's', '[]', '[]', '[\"receive\"]',"
                " 'https://helseid.test', true, 0, CURRENT_TIMESTAMP)"
            )
        )
        connection.execute(
            text(
                "INSERT INTO webhook_deliveries (id, webhook_id, delivery_id, event_key,"
                " event_type, body, state, attempts, due_at, created_at) VALUES (7, 1, 'told',"
                " 'k', 'alert', '{}', 'pending', 2, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            )
        )
    downgrade(database, "0014")
    assert current_revision(database) == "0014"
    with database.engine.connect() as connection:
        kept = connection.execute(
            text("SELECT id, webhook_id, event_key, state, attempts FROM webhook_deliveries")
        ).all()
        assert connection.execute(text("SELECT count(*) FROM webhooks")).scalar_one() == 1
    assert [tuple(row) for row in kept] == [(7, 1, "k", "pending", 2)]
    upgrade(database)
    assert differences(own_database) == []
    assert _deliveries(own_database) == 1


def test_an_upgrade_meeting_a_newer_versions_revision_says_so(own_database: Store) -> None:
    """Read again under the migration lock: an older serve that waited there while a newer
    version migrated (PostgreSQL) finds the newer revision and says so, not Alembic's
    traceback (open_store makes it the one-line StoreUnavailable)."""
    database = own_database.database
    with database.engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    with pytest.raises(SchemaNewer) as raised:
        upgrade(database)
    assert raised.value.revision == "0099"


def test_the_revision_read_without_alembic_is_alembics(own_database: Store) -> None:
    """Every command reads the schema's revision without Alembic: it must read what Alembic
    reads, at the head, a step below it, and where nothing was migrated yet."""
    database = own_database.database

    def alembics_reading() -> str | None:
        with database.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    readings = []
    for step in ("head", "down", "none"):
        if step == "down":
            downgrade(database, "-1")
        elif step == "none":
            with database.engine.begin() as connection:
                connection.execute(text("DROP TABLE alembic_version"))
        readings.append(current_revision(database))
        assert readings[-1] == alembics_reading()
    assert readings[0] == head_revision()
    assert readings[1] is not None and readings[1] != readings[0]
    assert readings[2] is None
