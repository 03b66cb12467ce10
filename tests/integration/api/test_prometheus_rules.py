"""The Prometheus set-up docs/OPERATIONS.md gives, checked by Prometheus' own ``promtool``: the
scrape configuration and the alert rules are valid, and the rules, evaluated by Prometheus'
rule engine on what a real ``GET /metrics`` answered, fire for what they say and stay quiet
otherwise. A metric renamed in the code, or a rule's expression mistyped in the docs, would
otherwise leave an alert that can never fire, and nobody would know until the day it should.

Skipped where promtool is missing (Debian's package ``prometheus``; scripts/install-system-deps.sh
installs it).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from api_sites import ApiPair
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from meldingstjener.api.clients import add_client
from meldingstjener.engine.alerts import AlertKind, raise_alert
from meldingstjener.store.tables import MessageRow

OPERATIONS = Path(__file__).resolve().parents[3] / "docs" / "OPERATIONS.md"
PROMTOOL = shutil.which("promtool")
JOB = "meldingstjener"  # the job_name of the documented scrape configuration

pytestmark = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian package prometheus)"
)


def _documented_yaml() -> tuple[str, str]:
    """The scrape configuration and the rules of the section "Monitoring with Prometheus"."""
    text = OPERATIONS.read_text(encoding="utf-8")
    section = text[text.index("## Monitoring with Prometheus") :]
    section = section[: section.find("\n## ", 1)]
    blocks = re.findall(r"```yaml\n(.*?)```", section, flags=re.DOTALL)
    [config] = [block for block in blocks if "scrape_configs:" in block]
    [rules] = [block for block in blocks if "groups:" in block]
    return config, rules


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def test_the_documented_configuration_and_rules_are_valid(tmp_path: Path) -> None:
    config, rules = _documented_yaml()
    (tmp_path / "meldingstjener.key").write_text("mtk_example\n")
    config = config.replace("/etc/prometheus/meldingstjener.key", "meldingstjener.key")
    (tmp_path / "prometheus.yml").write_text(config)
    (tmp_path / "rules.yml").write_text(rules)
    checked = _promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    checked = _promtool("check", "rules", "rules.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(_alert_names(rules))} rules found" in checked.stdout


def _alert_names(rules: str) -> list[str]:
    return re.findall(r"^\s*- alert: (\w+)", rules, flags=re.MULTILINE)


def _scraped_series(http: TestClient, key: str, scraped_at: float) -> list[dict[str, str]]:
    """What one scrape answered, as promtool's input series: the labels Prometheus adds (job,
    instance), each value held for the test's hour. A point in time is given relative to the
    scrape, as promtool's clock starts at 0 there: ``time() - x`` is the same age."""
    answer = http.get("/metrics", headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 200, answer.text
    series = [{"series": f'up{{job="{JOB}",instance="msh:443"}}', "values": "1x60"}]
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            value = sample.value
            if sample.name.endswith("_timestamp_seconds"):
                value -= scraped_at
            labels = {"job": JOB, "instance": "msh:443", **sample.labels}
            selector = ",".join(f'{name}="{text}"' for name, text in sorted(labels.items()))
            series.append({"series": f"{sample.name}{{{selector}}}", "values": f"{value:g}x60"})
    return series


def test_the_rules_fire_on_what_a_scrape_answers(api_pair: ApiPair, tmp_path: Path) -> None:
    pair, http = api_pair.pair, api_pair.hospital_http
    store = pair.hospital.store
    _, key = add_client(store, "prometheus", ["metrics"], [])
    two_hours_ago = pair.clock() - timedelta(hours=2)
    with store.unit_of_work() as uow:
        # a message submitted two hours ago and still not sent; its send, due since then,
        # taken by no worker (none runs here)
        uow.session.add(MessageRow(direction="out", status="accepted", created_at=two_hours_ago))
        # a message received two hours ago that the EPJ has not taken
        uow.session.add(MessageRow(direction="in", status="received", created_at=two_hours_ago))
        raise_alert(uow, AlertKind.NOT_DELIVERED, "given up", at=pair.clock())
        raise_alert(uow, AlertKind.JOB_FAILING, "a job fails", at=pair.clock())
        raise_alert(uow, AlertKind.APPREC_OWED, "owed", at=pair.clock(), key="8100001")
        uow.jobs.schedule("send", two_hours_ago)
        uow.commit()
    series = _scraped_series(http, key, pair.clock().timestamp())

    _, rules = _documented_yaml()
    (tmp_path / "rules.yml").write_text(rules)
    expected: dict[str, list[dict[str, object]]] = {
        "MeldingstjenerDown": [],
        "MeldingstjenerCriticalAlert": [{"exp_labels": {"kind": "not-delivered"}}],
        "MeldingstjenerAlertsOpen": [{"exp_labels": {"kind": "job-failing"}}],
        "MeldingstjenerSendsStuck": [{"exp_labels": {}}],
        "MeldingstjenerJobsLate": [{"exp_labels": {"kind": "send"}}],
        "MeldingstjenerInboxWaiting": [{"exp_labels": {}}],
        "MeldingstjenerAppRecOwed": [{"exp_labels": {}}],
        # the development certificates are valid for longer than 30 days
        "MeldingstjenerCertificateExpiring": [],
    }
    assert sorted(expected) == sorted(_alert_names(rules))  # every documented rule is tried
    tests = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [
                    {"eval_time": "40m", "alertname": name, "exp_alerts": alerts}
                    for name, alerts in expected.items()
                ],
            }
        ],
    }
    # JSON is YAML: promtool reads it as it reads its own files
    (tmp_path / "tests.yml").write_text(json.dumps(tests, indent=1))
    tested = _promtool("test", "rules", "tests.yml", cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr
