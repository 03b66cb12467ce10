"""The ``Idempotency-Key`` of ``POST /Messages``: what a retry must repeat to be a retry.

A key stands for one request: the business document, the receiver asked for
(``receiverHerIdsSubset``) and the ebXML overrides. A retry repeats all three and is answered
with the message made the first time; the key with any of them changed is another request, and
is refused (409 ``idempotency-key-reused``) rather than answered with a message that was not
what was asked (the same document to another receiver would otherwise never go there).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from meldingstjener.api.edi2_models import EbXmlInfo
from meldingstjener.store.payloads import PayloadSource, source_sha256


def request_digest(
    document: PayloadSource, receivers: Sequence[int], overrides: EbXmlInfo | None
) -> str:
    """The SHA-256 (hex) of one PostMessage request, as the engine keeps it with the message.

    Of the decoded document, not of its base64 (a retry may wrap the lines otherwise); no
    receivers and no overrides are the same whether left out, null or empty."""
    shape = {
        "document": source_sha256(document),
        "receivers": sorted(receivers),
        "overrides": overrides.model_dump(exclude_none=True) if overrides is not None else {},
    }
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()
