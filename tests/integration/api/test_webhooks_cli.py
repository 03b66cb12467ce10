"""The operator's webhook commands as an operator runs them: ``webhooks list`` shows every
client's webhooks and whether each is called, ``webhooks remove`` removes any one of them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from api_sites import ApiPair
from sqlalchemy import select
from typer.testing import CliRunner

import meldingstjener.cli.webhooks_cmds  # noqa: F401  (registers the commands)
from meldingstjener.cli.app import app
from meldingstjener.config import WebhookSettings
from meldingstjener.devsites import HOSPITAL_HER, dialog_note
from meldingstjener.engine.outbound import submit
from meldingstjener.integration.webhooks import WebhookDispatcher
from meldingstjener.store.tables import Credential, WebhookDeliveryRow, WebhookRow

# public addresses: registered, never called (the tests only collect what is owed to them)
DIPS_URL = "https://93.184.216.34/dips"
LAB_URL = "https://93.184.216.34/lab"


def _register(api_pair: ApiPair, key: str, url: str) -> int:
    answer = api_pair.hospital_http.post(
        "/api/webhooks", headers={"Authorization": f"Bearer {key}"}, json={"url": url}
    )
    assert answer.status_code == 201, answer.text
    return int(answer.json()["id"])


def _cli(api_pair: ApiPair, *args: str) -> tuple[int, str]:
    config = str(api_pair.pair.hospital_site.config_path)
    result = CliRunner().invoke(app, ["--config", config, "webhooks", *args])
    return result.exit_code, result.output


def _listed(api_pair: ApiPair, *args: str) -> list[dict[str, object]]:
    code, output = _cli(api_pair, "list", "--json", *args)
    assert code == 0, output
    return [json.loads(line) for line in output.splitlines()]


def test_the_operator_lists_every_clients_webhooks_and_removes_one(api_pair: ApiPair) -> None:
    # A client lists and removes only its own webhooks; the operator could do neither for
    # another client's (an EPJ that moved away, a JWT client its issuer withdrew).
    pair = api_pair.pair
    dips = _register(api_pair, api_pair.hospital_key, DIPS_URL)
    lab = _register(api_pair, api_pair.outsider_key, LAB_URL)
    with pair.hospital.store.unit_of_work() as uow:  # a JWT client's, its issuer not configured
        uow.session.add(
            WebhookRow(
                client_name="helseid-epj",
                credential=Credential.JWT,
                url="https://93.184.216.34/jwt",
                secret="s",
                events=["message.received"],
                her_ids=[HOSPITAL_HER],
                scopes=["receive"],
                issuer="https://helseid.test",
            )
        )
        uow.commit()
    submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "Varsle"), actor="test")
    pair.run()
    WebhookDispatcher(pair.hospital, WebhookSettings()).collect()  # owed, not called
    listed = _listed(api_pair)
    assert [(h["client"], h["url"], h["state"]) for h in listed] == [
        ("dips", DIPS_URL, "called"),
        ("lab-system", LAB_URL, "called"),
        ("helseid-epj", "https://93.184.216.34/jwt", "issuer-not-configured"),
    ]
    # dips: the message received and its status; lab-system acts for another HER-id
    assert [h["pending"] for h in listed] == [2, 0, 0]
    assert "secret" not in json.dumps(listed)
    assert [h["id"] for h in _listed(api_pair, "--client", "lab-system")] == [lab]
    code, table = _cli(api_pair, "list")
    assert code == 0 and DIPS_URL in table and "issuer-not-configured" in table

    code, output = _cli(api_pair, "remove", str(dips))
    assert code == 0, output
    assert f"webhook {dips} of client dips" in output and "2 call(s) owed" in output
    own = api_pair.hospital_http.get(
        "/api/webhooks", headers={"Authorization": f"Bearer {api_pair.hospital_key}"}
    )
    assert own.json() == []
    with pair.hospital.store.unit_of_work() as uow:
        assert list(uow.session.scalars(select(WebhookDeliveryRow))) == []
    assert [h["id"] for h in _listed(api_pair)][:1] == [lab]

    code, output = _cli(api_pair, "remove", str(dips))  # not found: the command's failure
    assert code == 1 and f"error (not-found): no webhook {dips}" in output


def test_the_webhook_commands_make_no_store_where_there_is_none(tmp_path: Path) -> None:
    # Run from another directory than the server's (a relative data_dir), they made an empty
    # store and listed no webhooks, or said the one to remove was not found.
    (tmp_path / "op.toml").write_text('data_dir = "data"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("MELDINGSTJENER_")}
    for command in (["list"], ["list", "--json"], ["remove", "1"]):
        result = subprocess.run(
            [sys.executable, "-m", "meldingstjener", "--config", "op.toml", "webhooks", *command],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=60,
            check=False,
        )
        assert result.returncode == 3, (command, result.stdout, result.stderr)
        assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())
