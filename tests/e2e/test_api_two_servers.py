"""Two real ``meldingstjener serve`` processes; an EPJ client written from NHN's EDI 2.0 OpenAPI
document (tests/integration/api/edi2_spec_client.py) sends through one server's API and receives
and answers through the other's, over HTTP all the way.
"""

from __future__ import annotations

import base64
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration" / "api"))

from edi2_spec_client import SpecClient

from meldingstjener.api.clients import add_client
from meldingstjener.bootstrap import open_store
from meldingstjener.config import load_settings
from meldingstjener.devsites import (
    GP_HER,
    HOSPITAL_SERVICE_HER,
    RunningServer,
    Site,
    dialog_note,
    prepare_sites,
)

pytestmark = pytest.mark.slow


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll the other processes' visible state until ``condition`` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for: {what}")
        time.sleep(0.1)


def _key(site: Site, name: str, her_id: str) -> str:
    store = open_store(load_settings(site.config_path))
    _, key = add_client(store, name, ["send", "receive"], [her_id])
    store.database.dispose()
    return key


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, Site, str, str]]:
    root = tmp_path_factory.mktemp("api-servers")
    gp, hospital = prepare_sites(root, retry_interval_seconds=1, retries=30)
    gp_key = _key(gp, "gp-epj", GP_HER)
    hospital_key = _key(hospital, "dips", HOSPITAL_SERVICE_HER)
    running = [RunningServer(gp, root / "gp.log"), RunningServer(hospital, root / "h.log")]
    for server in running:
        server.start()
    yield gp, hospital, gp_key, hospital_key
    for server in running:
        server.stop()


def test_epj_sends_and_receives_through_two_servers(
    servers: tuple[Site, Site, str, str], reference_dir: Path
) -> None:
    gp_site, hospital_site, gp_key, hospital_key = servers
    spec = reference_dir / "openapi" / "msh-api-v2.json"
    base = "http://127.0.0.1:{}"
    with (
        httpx.Client(base_url=base.format(gp_site.port), timeout=30) as gp_http,
        httpx.Client(base_url=base.format(hospital_site.port), timeout=30) as hospital_http,
    ):
        gp = SpecClient(spec, gp_http, gp_key)
        hospital = SpecClient(spec, hospital_http, hospital_key)
        document = dialog_note(gp_site, hospital_site, "Over to tjenere")
        sent = gp.call(
            "PostMessage",
            {
                "businessDocument": base64.b64encode(document).decode(),
                "contentType": "application/xml",
                "contentTransferEncoding": "base64",
            },
        )
        assert sent.status_code == 201, sent.text
        message_id = sent.json()

        def acknowledged() -> bool:
            [status] = gp.call("GetStatus", id=message_id).json()
            return bool(status["transportDeliveryState"] == "Acknowledged")

        wait_for(acknowledged, "the hospital's Acknowledgment")
        listed = hospital.call("GetMessages", ReceiverHerIds=[int(HOSPITAL_SERVICE_HER)])
        [message] = listed.json()
        fetched = hospital.call("GetBusinessDocument", id=message["id"]).json()
        assert base64.b64decode(fetched["businessDocument"]) == document
        answered = hospital.call(
            "PostAppRec",
            {"appRecStatus": "Ok"},
            id=message["id"],
            appRecSenderHerId=int(HOSPITAL_SERVICE_HER),
        )
        assert answered.status_code == 201, answered.text
        assert (
            hospital.call(
                "MarkMessageAsRead", id=message["id"], herId=int(HOSPITAL_SERVICE_HER)
            ).status_code
            == 204
        )

        def apprec_arrived() -> bool:
            [status] = gp.call("GetStatus", id=message_id).json()
            return bool(status["appRecStatus"] == "Ok")

        wait_for(apprec_arrived, "the hospital's AppRec at the GP")
        [info] = gp.call("GetApprecInfo", id=message_id).json()
        assert info["appRecStatus"] == "Ok"
        # The ebXML endpoint stays open to partners; the EPJ API does not.
        assert (
            httpx.get(f"{base.format(gp_site.port)}/Messages?ReceiverHerIds=1").status_code == 401
        )
