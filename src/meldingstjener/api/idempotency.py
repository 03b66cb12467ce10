"""The ``Idempotency-Key`` of ``POST /Messages``: what a retry must repeat to be a retry.

A key stands for one request: the business document, the receiver asked for
(``receiverHerIdsSubset``) and the ebXML overrides. A retry repeats all three and is answered
with the message made the first time; the key with any of them changed is another request, and
is refused (409 ``idempotency-key-reused``) rather than answered with a message that was not
what was asked (the same document to another receiver would otherwise never go there).

A key is its client's own: two clients choosing the same key, or a token's client and a key
client of the same name, never meet (:func:`scoped_key`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from meldingstjener.api.auth import Principal
from meldingstjener.api.edi2_models import EbXmlInfo
from meldingstjener.store.payloads import PayloadSource, source_sha256


def scoped_key(who: Principal, key: str) -> str:
    """``key`` as stored: this client's alone, ``<credential>:<length of name>:<name>:<key>``.

    The credential keeps a token's client apart from a key client of the same name, and both
    from the folder outbox's keys (``folder:<digest>``); the length keeps them apart although a
    token's client_id and the key may both hold ':' (``dips:a`` with ``b`` against ``dips``
    with ``a:b``). At most 8 + 4 + 100 + 1 + 255 characters: the column holds 400."""
    return f"{who.credential}:{len(who.client)}:{who.client}:{key}"


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
