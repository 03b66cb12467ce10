"""Every client's webhooks as the operator sees them: list them, remove one.

Through the API a client lists and removes only its own webhooks; the operator, who answers for
where this server sends what, needs to see them all (which client, which URL, whether they are
still called) and to remove one whose client cannot or will not: a JWT client its issuer
withdrew, an EPJ that moved. ``meldingstjener webhooks list|remove`` use these.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select

from meldingstjener.integration.webhooks import live
from meldingstjener.store.tables import Credential, WebhookDeliveryRow, WebhookRow
from meldingstjener.store.uow import Store


class WebhookNotFound(LookupError):
    """No webhook has the id given."""

    code = "not-found"


@dataclass(frozen=True)
class WebhookInfo:
    """One webhook: whose, where to, for what, and whether it is called (``state``)."""

    id: int
    client: str
    credential: str
    url: str
    events: tuple[str, ...]
    her_ids: tuple[str, ...]
    # called | disabled (after failures, or its key client revoked) | client-revoked |
    # issuer-not-configured (a JWT client's, while the API takes no tokens of its issuer)
    state: str
    consecutive_failures: int
    pending: int  # deliveries owed to it
    created_at: datetime
    disabled_at: datetime | None


def list_webhooks(
    store: Store, *, jwt_issuer: str | None, client: str | None = None
) -> list[WebhookInfo]:
    """Every webhook (of ``client`` only, when given), oldest first; ``jwt_issuer`` is the
    issuer the API takes tokens of (``[api] jwt_issuer``), which decides a JWT client's."""
    with store.unit_of_work() as uow:
        query = select(WebhookRow).order_by(WebhookRow.id)
        if client is not None:
            query = query.where(WebhookRow.client_name == client)
        rows = list(uow.session.scalars(query))
        pending = dict(
            uow.session.execute(
                select(WebhookDeliveryRow.webhook_id, func.count())
                .where(WebhookDeliveryRow.state == "pending")
                .group_by(WebhookDeliveryRow.webhook_id)
            ).all()
        )
        called = set(uow.session.scalars(select(WebhookRow.id).where(*live(jwt_issuer))))
        return [_info(row, _state(row, called), pending.get(row.id, 0)) for row in rows]


def remove_webhook(store: Store, webhook_id: int) -> WebhookInfo:
    """Remove a webhook and what is owed to it (its deliveries go with it); return what it
    was. Raises :class:`WebhookNotFound`."""
    with store.unit_of_work() as uow:
        row = uow.session.get(WebhookRow, webhook_id) if 0 < webhook_id < 2**62 else None
        if row is None:
            raise WebhookNotFound(f"no webhook {webhook_id}")
        pending = uow.session.scalar(
            select(func.count()).where(
                WebhookDeliveryRow.webhook_id == webhook_id, WebhookDeliveryRow.state == "pending"
            )
        )
        info = _info(row, "removed", int(pending or 0))
        uow.session.delete(row)  # its deliveries with it (ON DELETE CASCADE)
        uow.commit()
    return info


def _state(row: WebhookRow, called: set[int]) -> str:
    """Whether the dispatcher calls the webhook (``called``: the ids it does), and if not, why."""
    if row.id in called:
        return "called"
    if not row.active:
        return "disabled"
    return "client-revoked" if row.credential == Credential.API_KEY else "issuer-not-configured"


def _info(row: WebhookRow, state: str, pending: int) -> WebhookInfo:
    return WebhookInfo(
        id=row.id,
        client=row.client_name,
        credential=row.credential,
        url=row.url,
        events=tuple(row.events),
        her_ids=tuple(row.her_ids),
        state=state,
        consecutive_failures=row.consecutive_failures,
        pending=pending,
        created_at=row.created_at,
        disabled_at=row.disabled_at,
    )
