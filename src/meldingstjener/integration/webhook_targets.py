"""Which URLs a webhook may call: https to public addresses, unless the operator allows more.

Any API client registers webhook URLs, and the server calls them from where it stands: inside
the hospital's network, beside its databases and a cloud's metadata service. A client that may
name ``http://127.0.0.1:5432/`` or ``http://169.254.169.254/`` makes the server call them for it
(and the webhook's count of failures tells which ports answer). So a URL must be ``https`` and
its host reach only public addresses; loopback, link-local, private, unique-local, multicast,
unspecified and other addresses that are not global are refused unless they lie in a network of
``[webhooks] allowed_networks`` (an EPJ inside the hospital network), and ``http`` is refused
unless ``[webhooks] allow_http``.

The check is made when a URL is registered (its host resolved) and again by every call, on the
addresses the call then connects to (``webhook_http`` connects only to addresses checked here):
a name that resolved to a public address at registration and resolves to 127.0.0.1 now (DNS
rebinding) is refused then.

A URL holds no user name or password (``https://user:pw@host/``): httpx would send them as Basic
authentication, and the URL is kept and listed as it is, secret and all.

A URL is kept in its normal form (:func:`normal_url`): ``https://EPJ.example:443/hook`` and
``https://epj.example/hook`` are one URL, which a client registers once.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from meldingstjener import netresolve
from meldingstjener.config import WebhookSettings

# the port a scheme's URL names when it names none
_DEFAULT_PORTS = {"http": 80, "https": 443}

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_UNIQUE_LOCAL = ipaddress.IPv6Network("fc00::/7")


class TargetRefused(Exception):
    """A webhook URL, or the address a call would connect to, is not one it may call; the
    message says why in words for the client or the operator (no secret in it)."""


@dataclass(frozen=True)
class TargetPolicy:
    """What the operator allows beyond https to public addresses."""

    allow_http: bool = False
    allowed_networks: Sequence[IpNetwork] = ()

    @classmethod
    def of(cls, settings: WebhookSettings) -> TargetPolicy:
        return cls(settings.allow_http, tuple(settings.allowed_networks))

    def check_url(self, url: str) -> None:
        """Refuse (:class:`TargetRefused`) a URL whose scheme or host's addresses may not be
        called; its host is resolved now."""
        parsed = httpx.URL(url)
        if parsed.userinfo:
            # httpx sends it as Basic authentication, and GET /api/webhooks lists the URL: a
            # password kept and shown in plain text. The receiver knows a call by its signature.
            raise TargetRefused(
                "the URL must not hold a user name or password (user info before '@'); a call "
                "is known by its signature (X-Meldingstjener-Signature)"
            )
        if parsed.scheme != "https" and not (parsed.scheme == "http" and self.allow_http):
            raise TargetRefused(
                "the URL must be https (the operator allows http with [webhooks] allow_http)"
            )
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        self.addresses(parsed.host, port)

    def addresses(self, host: str, port: int, timeout: float | None = None) -> list[str]:
        """The addresses ``host`` resolves to now (within ``timeout`` seconds, see
        :func:`resolve`), each one checked: refused as a whole when one of them may not be
        called (a name that also points inward is not half trusted)."""
        found = resolve(host, port, timeout)
        for text in found:
            reason = self.refusal(ipaddress.ip_address(text.split("%", 1)[0]))
            if reason is not None:
                named = f"{host} resolves to {text}, " if text != host else f"{text} is "
                raise TargetRefused(
                    f"{named}{reason}; the operator allows such addresses with "
                    "[webhooks] allowed_networks"
                )
        return found

    def refusal(self, address: IpAddress) -> str | None:
        """Why ``address`` may not be called, or None when it may."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # ::ffff:127.0.0.1 reaches 127.0.0.1
        if any(address in network for network in self.allowed_networks):
            return None
        return _kind(address)


def normal_url(url: httpx.URL) -> str:
    """``url`` as it is kept and compared: scheme and host in lower case (httpx writes them so;
    an international name in its ASCII form, an IPv6 address compressed) and without the
    scheme's default port, which httpx drops only from some URLs (not from
    ``HTTPS://h:443/``), and with the path ``/`` where it has none (both ask for ``/``).
    Path and query stay as written otherwise: the receiver decides what they mean."""
    if url.port is not None and url.port == _DEFAULT_PORTS.get(url.scheme):
        url = url.copy_with(port=None)
    try:
        address = ipaddress.ip_address(url.host)
    except ValueError:
        pass  # a name, which httpx has written in lower case
    else:  # an address in its one spelling: [2001:DB8:0::25C8] is [2001:db8::25c8]
        url = url.copy_with(host=str(address))
    if url.path == "/":
        url = url.copy_with(path="/")  # httpx reads "" as "/", but writes it as it was given
    return str(url)


def _kind(address: IpAddress) -> str | None:
    """What kind of address a webhook may not call by default this is, or None (public)."""
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if isinstance(address, ipaddress.IPv6Address) and address in _UNIQUE_LOCAL:
        return "a unique-local address"
    if address.is_private:
        return "a private address"
    if address.is_reserved or not address.is_global:
        return "a reserved address, not a public one"  # shared (100.64/10), benchmarking ...
    return None


def resolve(host: str, port: int, timeout: float | None = None) -> list[str]:
    """The addresses ``host`` stands for (itself when it is one), in the resolver's order.

    Within ``timeout`` seconds (:class:`~meldingstjener.netresolve.ResolveTimeout` when not: a
    call's time-out, not a host refused); None, as at registration, leaves it to the system
    resolver's own time-out and attempts. Asked in netresolve's pool of webhooks: the hosts
    are the API clients' choice, and theirs left hanging bound only the webhooks' look-ups."""
    try:
        infos = netresolve.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, pool=netresolve.WEBHOOKS, timeout=timeout
        )
    except netresolve.ResolveTimeout:
        raise  # the name servers did not answer in time: nothing is known of the host
    except (OSError, UnicodeError, ValueError) as exc:  # not found; a label too long; a NUL
        raise TargetRefused(f"the host {host} cannot be resolved ({exc})") from None
    found: list[str] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        text = str(sockaddr[0])
        if text not in found:
            found.append(text)
    if not found:
        raise TargetRefused(f"the host {host} resolves to no address")
    return found
