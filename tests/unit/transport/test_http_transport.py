"""The HTTP transport's own refusals, decided before any connection is made."""

from __future__ import annotations

from pathlib import Path

import pytest

from meldingstjener.transport.base import Delivery, TransportFailure
from meldingstjener.transport.http import HttpTransport


def test_a_stored_message_that_is_gone_is_not_retried_blindly(tmp_path: Path) -> None:
    # A wire file removed from the payload store: resending cannot help, so the failure is
    # final and the message goes through the agreement's giving up (as on SMTP).
    transport = HttpTransport()
    gone = Delivery("http://127.0.0.1:9/ebms", "multipart/related", tmp_path / "missing.mime")
    with pytest.raises(TransportFailure) as failure:
        transport.send(gone)
    transport.close()
    assert failure.value.code == "body-missing" and not failure.value.retryable
