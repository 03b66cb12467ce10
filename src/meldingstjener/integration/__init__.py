"""EPJ integrations besides the API: folder drop (outbox/inbox) and webhooks.

``start_integrations`` starts their threads; ``meldingstjener serve`` calls it once at start.
"""

from __future__ import annotations

import logging
import threading

from meldingstjener.config import Settings
from meldingstjener.engine.context import EngineContext

log = logging.getLogger(__name__)


def start_integrations(
    ctx: EngineContext, settings: Settings, stop: threading.Event
) -> list[threading.Thread]:
    """Start the configured integrations as daemon threads; they end when ``stop`` is set."""
    from meldingstjener.integration.folder import FolderIntegration
    from meldingstjener.integration.webhooks import WebhookDispatcher

    threads = []
    folder = settings.folder
    if folder.outbox_dir is not None or folder.inbox_dir is not None:
        integration = FolderIntegration(ctx, folder)
        threads.append(threading.Thread(target=integration.run, args=(stop,), name="folder"))
    if settings.webhooks.enabled:
        dispatcher = WebhookDispatcher(ctx, settings.webhooks, jwt_issuer=settings.api.jwt_issuer)
        threads.append(threading.Thread(target=dispatcher.run, args=(stop,), name="webhooks"))
    for thread in threads:
        thread.daemon = True
        thread.start()
        log.info("integration %s started", thread.name)
    return threads
