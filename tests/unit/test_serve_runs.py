"""The names a `serve` run claims jobs under."""

from __future__ import annotations


def test_each_run_of_an_instance_claims_under_names_of_its_own() -> None:
    # A paused process and its restart claimed under the same worker names: each took the
    # other's claims for its own. A restart must still take back every claim of the instance.
    from meldingstjener.cli.engine_cmds import run_prefix

    first, second = run_prefix("gp:8080/"), run_prefix("gp:8080/")
    assert first != second
    assert first.startswith("gp:8080/") and second.startswith("gp:8080/")
    assert len(f"{first}handoff") <= len(f"{'x' * 100}/12345678/handoff") <= 128
