"""A fake HelseID token endpoint: ``POST /connect/token`` with the client-credentials grant.

Accepts registered clients by shared secret (``client_secret``) or by any non-empty
``client_assertion`` (it does not verify the JWT signature, which real HelseID does), and hands
out opaque bearer tokens that the fake APIs check with :meth:`FakeHelseId.is_valid`.
"""

from __future__ import annotations

import secrets
import threading

from meldingstjener.registry.fakes.server import Reply, Request


class FakeHelseId:
    def __init__(self, clients: dict[str, str], *, expires_in: int = 300) -> None:
        self.clients = dict(clients)  # client_id -> secret
        self.expires_in = expires_in
        self.issued: set[str] = set()
        self.requests = 0
        self._lock = threading.Lock()

    def is_valid(self, token: str | None) -> bool:
        with self._lock:
            return token is not None and token in self.issued

    def __call__(self, request: Request) -> Reply:
        if request.method != "POST" or request.path != "/connect/token":
            return Reply.json({"error": "not_found"}, 404)
        with self._lock:
            self.requests += 1
        form = request.form()
        if form.get("grant_type") != "client_credentials":
            return Reply.json({"error": "unsupported_grant_type"}, 400)
        client_id = form.get("client_id", "")
        secret = form.get("client_secret")
        known = client_id in self.clients
        authenticated = known and (
            (secret is not None and secrets.compare_digest(secret, self.clients[client_id]))
            or bool(form.get("client_assertion"))
        )
        if not authenticated:
            return Reply.json({"error": "invalid_client"}, 401)
        token = secrets.token_urlsafe(24)
        with self._lock:
            self.issued.add(token)
        return Reply.json(
            {"access_token": token, "token_type": "Bearer", "expires_in": self.expires_in}
        )
