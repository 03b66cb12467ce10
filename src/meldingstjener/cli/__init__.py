"""The `meldingstjener` command line.

Each area keeps its commands in its own module here and registers them on the one typer app;
this file only builds the app, the global options and the entry point.
"""

from __future__ import annotations

from meldingstjener.cli import (  # noqa: F401  (imported for their command registrations)
    alerts_cmds,
    api_cmds,
    demo_cmds,
    ebxml_cmds,
    engine_cmds,
    formats_cmds,
    mail_cmds,
    registry_cmds,
    security_cmds,
    store_cmds,
    webhooks_cmds,
)
from meldingstjener.cli.app import app, main

__all__ = ["app", "main"]
