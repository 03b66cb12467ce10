"""GetMessages' query: the unread received messages of some of our HER-ids.

An EPJ polls it every few seconds, so it is written to be answered from the partial index
``ix_messages_unread`` (see :data:`meldingstjener.store.tables.UNREAD_INBOUND`), whatever the
number of messages received and read before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, select, text

from meldingstjener.api.edi2_models import OrderBy
from meldingstjener.store.tables import UNREAD_INBOUND, MessageRow

# Delivered or answered by us count as unread too until the EPJ marks them read.
UNREAD_STATUSES = ("acknowledged", "delivered", "apprec-sent")


def unread_query(
    receivers: Sequence[int],
    *,
    sender: int | None = None,
    business_document_id: str | None = None,
    order: OrderBy = OrderBy.Ascending,
    count: int = 10,
) -> Select[Any]:
    """Up to ``count`` unread received messages to ``receivers``, by the time we received them."""
    query = select(MessageRow).where(
        # the index's own predicate, as literal SQL: PostgreSQL's generic plan for a bound
        # "direction = $1" cannot tell that the partial index covers the query
        text(UNREAD_INBOUND),
        MessageRow.status.in_(UNREAD_STATUSES),
        MessageRow.to_her_id.in_([str(h) for h in receivers]),
    )
    if sender is not None:
        query = query.where(MessageRow.from_her_id == str(sender))
    if business_document_id is not None:
        query = query.where(MessageRow.msg_id == business_document_id)
    created = MessageRow.created_at
    ordering = created.asc() if order is OrderBy.Ascending else created.desc()
    return query.order_by(ordering).limit(count)
