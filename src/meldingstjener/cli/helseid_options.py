"""The HelseID options the commands that call NHN's APIs share, and the token provider they give.

With a client key (``--key-file``, a JWK from HelseID's self-service portal or a PEM key) the
client authenticates with ``private_key_jwt`` and its tokens are DPoP-bound, as HelseID and NHN's
APIs require. A client secret (from ``MELDINGSTJENER_HELSEID_CLIENT_SECRET``, never from the
command line, where other users could see it) is for token servers that take one. Without a
token endpoint, a fixed token is read from the environment variable the command names.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from meldingstjener.registry.auth import TokenProvider

TokenUrlOption = Annotated[
    str | None,
    typer.Option(envvar="MELDINGSTJENER_HELSEID_TOKEN_URL", help="HelseID token endpoint."),
]
ClientIdOption = Annotated[
    str | None,
    typer.Option(envvar="MELDINGSTJENER_HELSEID_CLIENT_ID", help="HelseID client id."),
]
KeyFileOption = Annotated[
    Path | None,
    typer.Option(
        envvar="MELDINGSTJENER_HELSEID_KEY_FILE",
        dir_okay=False,
        help="The HelseID client's private key (JWK or PEM): private_key_jwt and DPoP.",
    ),
]
AudienceOption = Annotated[
    str | None,
    typer.Option(
        envvar="MELDINGSTJENER_HELSEID_AUDIENCE",
        help="Audience of the client assertion (default: the token endpoint's origin, "
        "HelseID's issuer).",
    ),
]
DpopOption = Annotated[
    bool,
    typer.Option(
        "--dpop/--no-dpop",
        help="Bind the token to the client key with DPoP (with --key-file; NHN requires it).",
    ),
]


def helseid_tokens(
    *,
    token_url: str | None,
    client_id: str | None,
    scope: str | None,
    key_file: Path | None,
    audience: str | None,
    dpop: bool,
    static_token_variable: str,
) -> TokenProvider:
    """The token provider the options ask for; a clear exit (code 2) when they do not add up."""
    from meldingstjener.registry.auth import StaticToken, helseid_token_provider
    from meldingstjener.registry.helseid import ClientKeyError

    if not (token_url and client_id):
        if key_file is not None:
            raise _usage("--key-file needs --token-url and --client-id")
        return StaticToken(os.environ.get(static_token_variable, ""))
    secret = os.environ.get("MELDINGSTJENER_HELSEID_CLIENT_SECRET")
    if key_file is None and not secret:
        raise _usage(
            "give the HelseID client's key with --key-file (or "
            "MELDINGSTJENER_HELSEID_KEY_FILE), or set MELDINGSTJENER_HELSEID_CLIENT_SECRET"
        )
    if key_file is None and audience is not None:
        # said rather than ignored: the operator expects a client assertion that is not sent
        raise _usage("--audience is the client assertion's: it needs --key-file")
    try:
        return helseid_token_provider(
            token_url,
            client_id,
            scope=scope,
            key_file=key_file,
            client_secret=secret,
            audience=audience,
            dpop=dpop,
        )
    except ClientKeyError as exc:
        raise _usage(f"{exc} ({exc.code})") from None


def _usage(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)
