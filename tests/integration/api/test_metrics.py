"""``GET /metrics``: the store's figures in the Prometheus text format, read with
prometheus_client's own parser, on SQLite and PostgreSQL. The figures follow the store (a
message submitted, its job falling late, an alert opened and acknowledged); a client needs the
``metrics`` or the ``admin`` scope; and the answer names no patient, no partner and no text of a
message. Points in time are Unix times, given only when there is one (a 0 would be 1970).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
from api_sites import ApiPair, post_document
from engine_pair import Pair
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from token_issuer import ISSUER, token_issuer

from meldingstjener import __version__
from meldingstjener.api.app import create_app
from meldingstjener.api.clients import add_client
from meldingstjener.api.metrics import CONTENT_TYPE
from meldingstjener.devsites import GP_HER, HOSPITAL_HER, HOSPITAL_SERVICE_HER
from meldingstjener.engine.alerts import SEVERITY, AlertKind, raise_alert
from meldingstjener.engine.worker import HANDLERS
from meldingstjener.formats import Coded, Dialogmelding, Notat, build_dialogmelding, code_list
from meldingstjener.formats.parties import Ident, Person
from meldingstjener.store.audit import AuditQuery, query
from meldingstjener.store.tables import MessageRow

PATIENT_ID = "15720255178"
PATIENT_NAME = "Nordmann"
NOTE = "Pasienten har fått ny resept"

Figures = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _scrape(http: TestClient, key: str) -> tuple[str, Figures]:
    answer = http.get("/metrics", headers=_bearer(key))
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == CONTENT_TYPE
    figures: Figures = {}
    for family in text_string_to_metric_families(answer.text):
        assert family.type == "gauge", family.name
        for sample in family.samples:
            figures[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return answer.text, figures


def _one(figures: Figures, name: str, **labels: str) -> float:
    return figures[(name, frozenset(labels.items()))]


def _post_with_patient(api_pair: ApiPair) -> str:
    """A note from the GP about a patient (named, with a national id), posted with the GP's key."""
    pair = api_pair.pair
    themes = code_list("9152")
    theme = Coded(v="1", dn=themes.text("1"), s=themes.oid)
    fnr = Coded(v="FNR", dn="Fødselsnummer", s="2.16.578.1.12.4.1.1.8116")
    patient = Person(family_name=PATIENT_NAME, given_name="Kari", idents=(Ident(PATIENT_ID, fnr),))
    document = build_dialogmelding(
        message_type="DIALOG_NOTAT",
        sender=pair.gp_site.party(),
        receiver=pair.hospital_site.party(),
        dialog=Dialogmelding(version="1.0", notater=(Notat(tema_kodet=theme, tekst=NOTE),)),
        patient=patient,
    )
    assert PATIENT_ID.encode() in document
    sent = post_document(api_pair.gp_http, api_pair.gp_key, document)
    assert sent.status_code == 201, sent.text
    return str(sent.json())


def test_the_figures_follow_the_store_and_name_no_patient(api_pair: ApiPair) -> None:
    pair, http = api_pair.pair, api_pair.gp_http
    _, key = add_client(pair.gp.store, "prometheus", ["metrics"], [])

    _, before = _scrape(http, key)
    # every status under way is there, 0 when no message has it
    assert (
        _one(before, "meldingstjener_messages_under_way", direction="out", status="accepted") == 0
    )
    assert (
        _one(before, "meldingstjener_messages_under_way", direction="in", status="delivered") == 0
    )
    # nothing under way, nothing due: no point in time is given (not a 0, which is 1970)
    assert not [name for name, _ in before if name.endswith("_oldest_created_timestamp_seconds")]
    assert not [name for name, _ in before if name.endswith("_oldest_due_timestamp_seconds")]
    # every alert kind at its severity, and every job kind, 0 when there is none
    for kind in AlertKind:
        for name in ("meldingstjener_alerts_open", "meldingstjener_alerts_unacknowledged"):
            assert _one(before, name, kind=kind, severity=SEVERITY[kind]) == 0
    for kind in HANDLERS:
        for name in ("waiting", "late", "running"):
            assert _one(before, f"meldingstjener_jobs_{name}", kind=kind) == 0
    # our own certificates' notAfter, as Unix time: Prometheus takes the time left itself
    for use, certificate in (
        ("signing", pair.gp.keys.signing_certificate),
        ("encryption", pair.gp.keys.encryption_certificate),
    ):
        expires = certificate.not_valid_after_utc.timestamp()
        assert (
            _one(before, "meldingstjener_certificate_not_after_timestamp_seconds", certificate=use)
            == expires
        )

    posted = pair.clock().timestamp()
    message_id = _post_with_patient(api_pair)  # accepted, its send due now (no worker runs)
    pair.clock.advance(seconds=90)
    text, after = _scrape(http, key)
    out_accepted = {"direction": "out", "status": "accepted"}
    assert _one(after, "meldingstjener_messages_under_way", **out_accepted) == 1
    # when it was made, not its age by this server's clock (time() - x in PromQL)
    oldest = "meldingstjener_messages_oldest_created_timestamp_seconds"
    assert _one(after, oldest, **out_accepted) == posted
    assert [dict(labels) for name, labels in after if name == oldest] == [out_accepted]
    due = {(name, labels) for (name, labels), value in after.items() if value and "jobs" in name}
    kinds = {dict(labels)["kind"] for name, labels in due if name == "meldingstjener_jobs_late"}
    assert kinds, after  # its send, due 90 s ago and taken by no worker, is late
    for kind in kinds:
        assert _one(after, "meldingstjener_jobs_waiting", kind=kind) >= 1
        assert _one(after, "meldingstjener_jobs_running", kind=kind) == 0
        assert _one(after, "meldingstjener_jobs_oldest_due_timestamp_seconds", kind=kind) == posted

    # a worker takes them: no longer waiting nor late, running; still due since the post
    with pair.gp.store.unit_of_work() as uow:
        held = uow.jobs.claim_due("w1", now=pair.clock(), limit=100, lease=timedelta(minutes=5))
        # a received message the EPJ has taken: counted, never dated (it may never be answered)
        uow.session.add(MessageRow(direction="in", status="delivered", msg_type="DIALOG_NOTAT"))
        uow.commit()
    assert {job.kind for job in held} >= kinds
    _, running = _scrape(http, key)
    for kind in kinds:
        assert _one(running, "meldingstjener_jobs_waiting", kind=kind) == 0
        assert _one(running, "meldingstjener_jobs_late", kind=kind) == 0
        assert _one(running, "meldingstjener_jobs_running", kind=kind) >= 1
        assert (
            _one(running, "meldingstjener_jobs_oldest_due_timestamp_seconds", kind=kind) == posted
        )
    in_delivered = {"direction": "in", "status": "delivered"}
    assert _one(running, "meldingstjener_messages_under_way", **in_delivered) == 1
    assert [dict(labels) for name, labels in running if name == oldest] == [out_accepted]

    with pair.gp.store.unit_of_work() as uow:
        raise_alert(
            uow, AlertKind.NOT_DELIVERED, "given up", at=pair.clock(), message_id=message_id
        )
        uow.commit()
        [alert] = uow.alerts.for_message(message_id)
    not_delivered = {"kind": "not-delivered", "severity": "critical"}
    _, raised = _scrape(http, key)
    assert _one(raised, "meldingstjener_alerts_open", **not_delivered) == 1
    assert _one(raised, "meldingstjener_alerts_unacknowledged", **not_delivered) == 1
    with pair.gp.store.unit_of_work() as uow:
        uow.alerts.acknowledge(alert.id, by="ops", at=pair.clock())
        uow.commit()
    _, acknowledged = _scrape(http, key)
    assert _one(acknowledged, "meldingstjener_alerts_open", **not_delivered) == 1
    assert _one(acknowledged, "meldingstjener_alerts_unacknowledged", **not_delivered) == 0

    # counts, kinds and ages: no patient, no text of the message, no party, no identifier
    for secret in (PATIENT_ID, PATIENT_NAME, NOTE, message_id, GP_HER, HOSPITAL_HER):
        assert secret not in text


def test_a_scrape_needs_the_metrics_or_the_admin_scope(api_pair: ApiPair) -> None:
    pair, http = api_pair.pair, api_pair.hospital_http

    assert http.get("/metrics").status_code == 401
    refused = http.get("/metrics", headers=_bearer("mtk_not-a-key"))
    assert refused.status_code == 401
    assert refused.headers["content-type"] == "application/problem+json"

    # the EPJ's key reads messages, not the server's figures: refused, and audited
    forbidden = http.get("/metrics", headers={"X-Api-Key": api_pair.hospital_key})
    assert forbidden.status_code == 403
    assert forbidden.json()["detail"] == "the client lacks the 'metrics' scope (or 'admin')"
    [row] = query(pair.hospital.store, AuditQuery(None, "dips", None, 10))
    assert (row["action"], row["outcome"]) == ("/metrics", "refused")

    _, admin = _scrape(http, api_pair.hospital_admin_key)  # the operator's key reads them too
    assert _one(admin, "meldingstjener_build_info", version=__version__) == 1
    _, key = add_client(pair.hospital.store, "prometheus", ["metrics"], [])
    _scrape(http, key)

    # the metrics scope opens nothing else
    for path in ("/api/alerts", "/Messages"):
        params = {"ReceiverHerIds": HOSPITAL_SERVICE_HER} if path == "/Messages" else {}
        assert http.get(path, params=params, headers=_bearer(key)).status_code == 403, path


def test_the_metrics_scope_opens_no_webhook(api_pair: ApiPair) -> None:
    """Its scope lets it hear of no event: it may not register a webhook (it got one for no
    event, and a secret), nor list or remove any; each refusal audited."""
    pair, http = api_pair.pair, api_pair.hospital_http
    _, key = add_client(pair.hospital.store, "prometheus", ["metrics"], [])
    hook = "https://93.184.216.34/hook"
    for body in ({"url": hook}, {"url": hook, "events": []}):
        made = http.post("/api/webhooks", json=body, headers=_bearer(key))
        assert made.status_code == 403, made.text
        assert "secret" not in made.json()
    assert http.get("/api/webhooks", headers=_bearer(key)).status_code == 403
    assert http.delete("/api/webhooks/1", headers=_bearer(key)).status_code == 403
    rows = query(pair.hospital.store, AuditQuery(None, "prometheus", None, 10))
    assert sorted((row["action"], row["outcome"]) for row in rows) == [
        ("/api/webhooks", "refused"),
        ("/api/webhooks", "refused"),
        ("/api/webhooks", "refused"),
        ("/api/webhooks/1", "refused"),
    ]
    # the EPJ's key (scope receive) still registers its own
    made = http.post("/api/webhooks", json={"url": hook}, headers=_bearer(api_pair.hospital_key))
    assert made.status_code == 201, made.text


def test_a_token_of_the_issuer_with_the_metrics_scope_scrapes(pair: Pair, tmp_path: Path) -> None:
    """The scope a token's claims give is taken as a key client's is (it was dropped, unknown)."""
    key, settings = token_issuer(tmp_path)
    claims = {
        "iss": ISSUER,
        "aud": "meldingstjener",
        "exp": datetime.now(UTC) + timedelta(minutes=5),
        "client_id": "prometheus",
    }
    with TestClient(create_app(pair.hospital, api_settings=settings)) as http:
        for scope, status in (("metrics", 200), ("receive", 403)):
            token = jwt.encode({**claims, "scope": scope}, key, algorithm="RS256")
            assert http.get("/metrics", headers=_bearer(token)).status_code == status, scope
