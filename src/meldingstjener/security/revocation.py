"""Revocation status of a certificate: CRLs (configured or fetched from the distribution point
the certificate names) and OCSP (where the certificate names a responder).

The newest CRL of the issuer decides; a CRL whose scope does not cover the certificate (a
delta CRL, one narrowed by its IssuingDistributionPoint) is not used. An OCSP answer without a
nextUpdate is taken for ``OCSP_MAX_AGE`` after its thisUpdate.

Network access goes through an injectable fetcher with a timeout, and fetched CRLs and OCSP
answers are cached until their nextUpdate (at most ``cache_seconds``), so a busy server does not
download the same CRL, or ask the responder, for every message. When a refetch fails, the last
good CRL from that distribution point still proves a revocation it lists (a revocation never
ends); past its nextUpdate it proves nothing else. The outcome is GOOD, REVOKED or UNKNOWN;
what UNKNOWN means (soft or hard fail) is decided by :mod:`validation`. An UNKNOWN says whether
a source failed (``source_failed``: an outage, which passes) or the certificate itself leaves its
status unknown (it names no source, its responder does not know it, the only CRL is another's or
out of scope), which waiting does not mend.

The timeout is a deadline for the whole request (resolving the host's name, connecting, sending,
the status line, the headers and the body), not for each read: a responder that trickles its
answer a byte at a time is given up on when the time is up, and so is a resolver that hangs
(:mod:`meldingstjener.netresolve`, in a pool of its own: webhooks' hosts, which API clients
choose, left hanging do not take the look-ups of a CA's hosts). A source (a CRL's URL, an OCSP
responder) that gave no usable answer is not asked again for ``FAILURE_MEMORY`` (at most
``cache_seconds``): meanwhile its failure is the answer at once, so during an outage each check
does not wait the whole timeout again, for each of a certificate's sources.
"""

from __future__ import annotations

import enum
import functools
import http.client
import io
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

from meldingstjener import netresolve

Fetcher = Callable[[str, bytes | None, str | None, float], bytes]
"""fetch(url, body or None for GET, content type of the body, timeout seconds) -> bytes."""

_CLOCK_SKEW = timedelta(minutes=5)
# An OCSP answer without nextUpdate says "newer information is always available": it has no
# end of its own, so an old one (replayed, or from a cache) is taken only this long.
OCSP_MAX_AGE = timedelta(hours=24)
_MAX_RESPONSE = 20 * 1024 * 1024  # national CA CRLs are large, but not this large
# OCSP answers kept at most (one per certificate asked about): a hostile stream of messages
# signed with ever new certificates must not grow the cache without end
_OCSP_CACHE_SIZE = 10_000
# How long a source that failed (could not be reached, timed out, answered no CRL or OCSP
# answer, or an OCSP tryLater or error) is not asked again: its failure is the answer meanwhile.
# Long enough that an outage does not cost every message the whole timeout, short enough that
# the end of one is seen within a minute.
FAILURE_MEMORY = timedelta(seconds=60)


class RevocationStatus(enum.Enum):
    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class RevocationResult:
    """``source_failed`` (UNKNOWN only): a source that could have answered did not (could not
    be reached, timed out, answered tryLater or an error, or what is no CRL or OCSP answer), now
    or within ``FAILURE_MEMORY``: a state of the CA's services or of our network, which passes.
    False when every source answered and none decided (the responder does not know the
    certificate, a CRL out of date, signed by another or out of scope) or the certificate names
    none: the certificate's state, which does not pass by waiting."""

    status: RevocationStatus
    source: str  # "crl <url>", "ocsp <url>", "configured crl", or "none"
    detail: str
    revoked_at: datetime | None = None
    source_failed: bool = False


@dataclass
class _Notes:
    """What one check found on its way: ``texts`` for the detail, and the sources that gave
    no answer (``failed``: see :attr:`RevocationResult.source_failed`)."""

    texts: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def append(self, text: str) -> None:
        self.texts.append(text)


def urllib_fetch(url: str, body: bytes | None, content_type: str | None, timeout: float) -> bytes:
    """Default fetcher: plain HTTP(S) GET or POST with a size limit, done within ``timeout``
    seconds as a whole (see :class:`_Deadline`). Every failure is an OSError or a ValueError."""
    if not url.lower().startswith(("http://", "https://")):
        raise ValueError(f"unsupported URL scheme in {url}")
    headers = {"Content-Type": content_type} if content_type else {}
    request = urllib.request.Request(url, data=body, headers=headers)
    deadline = _Deadline(timeout)
    opener = urllib.request.build_opener(
        _DeadlineHTTPHandler(deadline), _DeadlineHTTPSHandler(deadline)
    )
    try:
        with opener.open(request, timeout=timeout) as response:
            data: bytes = response.read(_MAX_RESPONSE + 1)
    except http.client.HTTPException as exc:  # a broken status line, headers or body
        raise ValueError(f"unreadable HTTP answer from {url}: {type(exc).__name__}") from None
    if len(data) > _MAX_RESPONSE:
        raise ValueError(f"response from {url} is larger than {_MAX_RESPONSE} bytes")
    return data


class _Deadline:
    """The end of one request's time: urllib's timeout bounds each socket operation only, so a
    responder sending a byte a second would hold a check (and the message it is for) for as long
    as it likes, and the host's name lookup not at all. Each receive and send waits at most what
    is left (resolving and connecting too; a TLS handshake waits at most what was left when the
    connection was made, each of its steps)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no whole answer within {self.seconds:g} s")
        return left


class _DeadlineSocket:
    """A connected socket whose receives and sends wait at most what is left of the deadline;
    everything else is the socket's. Closed when both the connection and the answer's file are
    (as a socket with a file made by its own ``makefile``: urllib closes the connection before
    the answer is read)."""

    def __init__(self, sock: socket.socket, deadline: _Deadline) -> None:
        self._sock = sock
        self._deadline = deadline
        self._files = 0
        self._closed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        self._sock.settimeout(self._deadline.left())
        return self._sock.recv_into(buffer, nbytes, flags)

    def sendall(self, data: Any, flags: int = 0) -> None:
        self._sock.settimeout(self._deadline.left())
        self._sock.sendall(data, flags)

    def makefile(self, mode: str = "rb", *_args: object, **_kwargs: object) -> io.BufferedReader:
        # http.client reads the answer through this file only ("rb"): its reads come here
        self._files += 1
        return io.BufferedReader(socket.SocketIO(self, "rb"))  # type: ignore[arg-type]

    def _decref_socketios(self) -> None:  # what socket.SocketIO.close calls
        self._files -= 1
        if self._closed and self._files <= 0:
            self._sock.close()

    def close(self) -> None:
        self._closed = True
        if self._files <= 0:
            self._sock.close()


def _connect_within(
    deadline: _Deadline,
    address: tuple[str, int],
    _timeout: object = None,
    source_address: tuple[str, int] | None = None,
) -> socket.socket:
    """``socket.create_connection``'s work, each step within ``deadline`` (its own time-out is
    the deadline's): the host's name resolved by :func:`netresolve.getaddrinfo` (the resolver
    takes no time-out), then its addresses tried in turn, each connect waiting at most what is
    left. The connection's host stays the name: TLS sends it (SNI) and verifies the certificate
    for it."""
    host, port = address
    infos = netresolve.getaddrinfo(
        host, port, 0, socket.SOCK_STREAM, pool=netresolve.REVOCATION, timeout=deadline.left()
    )
    failure: OSError | None = None
    for family, kind, proto, _name, sockaddr in infos:
        left = deadline.left()  # TimeoutError once the time is up: no further address is tried
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(left)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            sock.settimeout(deadline.left())  # what the TLS handshake, if any, may take
        except OSError as exc:
            sock.close()
            failure = exc
            continue
        return sock
    raise failure or OSError(f"{host} resolves to no address")


def _connect_by_deadline(connection: http.client.HTTPConnection, deadline: _Deadline) -> None:
    """Make ``connection`` resolve and connect within ``deadline``, through the one hook
    http.client has for it (both connect methods, HTTPS's before its handshake, call it)."""
    if not hasattr(connection, "_create_connection"):
        # http.client connects otherwise now: its name lookup would be outside the deadline
        raise RuntimeError("http.client has no _create_connection to replace; update revocation")
    connect = functools.partial(_connect_within, deadline)
    connection._create_connection = connect


class _DeadlineHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args: Any, deadline: _Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline = deadline
        _connect_by_deadline(self, deadline)

    def connect(self) -> None:
        self.timeout = self._deadline.left()
        super().connect()
        self.sock = _DeadlineSocket(self.sock, self._deadline)


class _DeadlineHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args: Any, deadline: _Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline = deadline
        _connect_by_deadline(self, deadline)

    def connect(self) -> None:
        self.timeout = self._deadline.left()
        super().connect()  # the TLS handshake too
        self.sock = _DeadlineSocket(self.sock, self._deadline)


class _DeadlineHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        connection = functools.partial(_DeadlineHTTPConnection, deadline=self._deadline)
        return self.do_open(connection, req)


class _DeadlineHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        connection = functools.partial(_DeadlineHTTPSConnection, deadline=self._deadline)
        return self.do_open(connection, req)


class RevocationChecker:
    """Finds the revocation status of a certificate given its issuer."""

    def __init__(
        self,
        *,
        crls: Sequence[x509.CertificateRevocationList] = (),
        fetch_crls: bool = True,
        ocsp_enabled: bool = True,
        fetcher: Fetcher = urllib_fetch,
        timeout: float = 5.0,
        cache_seconds: float = 3600.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._configured = list(crls)
        self._fetch_crls = fetch_crls
        self._ocsp = ocsp_enabled
        self._fetcher = fetcher
        self._timeout = timeout
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._cache: dict[str, tuple[x509.CertificateRevocationList, datetime]] = {}
        # The last CRL fetched from each URL whose signature checked out: when the refetch
        # fails it still proves a revocation (a revocation never ends), only not a good status.
        self._last_good: dict[str, x509.CertificateRevocationList] = {}
        # (responder URL, certificate fingerprint) -> (a usable OCSP answer, reused until)
        self._ocsp_cache: dict[tuple[str, bytes], tuple[ocsp.OCSPResponse, datetime]] = {}
        self._lock = threading.Lock()
        # (CRL signature, issuer) pairs already verified: a CRL serves every message until the
        # next one replaces it, and its signature check was an RSA verify per message
        self._verified: dict[tuple[bytes, x509.Certificate], bool] = {}
        # URL -> (the note its failure was told by, not asked again until): see FAILURE_MEMORY
        self._failed: dict[str, tuple[str, datetime]] = {}

    def _remembered_failure(self, url: str, now: datetime, notes: _Notes) -> bool:
        """Whether ``url`` failed a short while ago; its note is told again meanwhile (the
        same words, so an alert quoting them is not told anew for each check)."""
        with self._lock:
            failed = self._failed.get(url)
        if failed is None or failed[1] <= now:
            return False
        notes.append(failed[0])
        notes.failed.append(url)
        return True

    def _failure(self, url: str, note: str, now: datetime, notes: _Notes) -> None:
        notes.append(note)
        notes.failed.append(url)
        memory = min(FAILURE_MEMORY, timedelta(seconds=self._cache_seconds))
        with self._lock:
            if len(self._failed) >= _OCSP_CACHE_SIZE:  # URLs of certificates of anybody
                self._failed = {u: f for u, f in self._failed.items() if f[1] > now}
                if len(self._failed) >= _OCSP_CACHE_SIZE:
                    self._failed.clear()
            self._failed[url] = (note, now + memory)

    def _answered(self, url: str) -> None:
        with self._lock:
            self._failed.pop(url, None)

    def check(
        self, cert: x509.Certificate, issuer: x509.Certificate, at: datetime
    ) -> RevocationResult:
        notes = _Notes()
        # the newest CRL first: a configured one that is still current must not hide a
        # revocation a newer one (fetched from the distribution point) lists
        crls = sorted(
            self._crls_for(cert, issuer, notes), key=lambda found: _issued(found[1]), reverse=True
        )
        for source, crl, kept in crls:
            scope = _scope_problem(crl, cert)
            if scope is not None:
                notes.append(f"the {source} is not used: {scope}")
                continue
            result = self._from_crl(crl, cert, at, source, notes, kept=kept)
            if result is not None:
                return result
        if self._ocsp:
            for url in _ocsp_urls(cert):
                result = self._from_ocsp(url, cert, issuer, at, notes)
                if result is not None:
                    return result
        detail = (
            "; ".join(notes.texts) or "no CRL or OCSP responder is available for this certificate"
        )
        return RevocationResult(
            RevocationStatus.UNKNOWN, "none", detail, source_failed=bool(notes.failed)
        )

    # --- CRL ---------------------------------------------------------------------------------

    def _crls_for(
        self, cert: x509.Certificate, issuer: x509.Certificate, notes: _Notes
    ) -> list[tuple[str, x509.CertificateRevocationList, bool]]:
        """(source, CRL, kept): kept is True for the last good CRL from a distribution point
        that could not be fetched anew."""
        found = [
            ("configured crl", crl, False)
            for crl in self._configured
            if crl.issuer == issuer.subject and self._signed_by(crl, issuer)
        ]
        if self._fetch_crls:
            for url in _crl_urls(cert):
                crl = self._fetched_crl(url, notes)
                if crl is not None and (
                    crl.issuer != issuer.subject or not self._signed_by(crl, issuer)
                ):
                    notes.append(f"the CRL from {url} is not signed by the certificate's issuer")
                    crl = None
                if crl is not None:
                    with self._lock:
                        self._last_good[url] = crl
                    found.append((f"crl {url}", crl, False))
                    continue
                with self._lock:
                    kept = self._last_good.get(url)
                if (
                    kept is not None
                    and kept.issuer == issuer.subject
                    and self._signed_by(kept, issuer)
                ):
                    found.append((f"last crl fetched from {url}", kept, True))
        return found

    def _signed_by(self, crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
        key = (crl.signature, issuer)
        known = self._verified.get(key)
        if known is None:
            known = _crl_signed_by(crl, issuer)
            if len(self._verified) > 1000:
                self._verified.clear()
            self._verified[key] = known
        return known

    def _fetched_crl(self, url: str, notes: _Notes) -> x509.CertificateRevocationList | None:
        now = self._clock()
        with self._lock:
            cached = self._cache.get(url)
            if cached is not None and cached[1] > now:
                return cached[0]
        if self._remembered_failure(url, now, notes):
            return None
        try:
            data = self._fetcher(url, None, None, self._timeout)
            crl = (
                x509.load_pem_x509_crl(data)
                if data.lstrip().startswith(b"-----BEGIN")
                else x509.load_der_x509_crl(data)
            )
        except (OSError, ValueError) as exc:
            note = f"could not fetch the CRL from {url}: {type(exc).__name__}: {exc}"
            self._failure(url, note, now, notes)
            return None
        self._answered(url)
        expires = now + timedelta(seconds=self._cache_seconds)
        next_update = crl.next_update_utc
        if next_update is not None:
            expires = min(expires, next_update)
        with self._lock:
            self._cache[url] = (crl, expires)
        return crl

    def _from_crl(
        self,
        crl: x509.CertificateRevocationList,
        cert: x509.Certificate,
        at: datetime,
        source: str,
        notes: _Notes,
        *,
        kept: bool = False,
    ) -> RevocationResult | None:
        entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
        if entry is not None and entry.revocation_date_utc <= at:
            return RevocationResult(
                RevocationStatus.REVOKED,
                source,
                f"revoked on {entry.revocation_date_utc:%Y-%m-%d %H:%M} UTC ({source})",
                entry.revocation_date_utc,
            )
        next_update = crl.next_update_utc
        if next_update is not None and next_update < self._clock():
            notes.append(f"the {source} is out of date (next update was {next_update:%Y-%m-%d})")
            return None
        if next_update is None and kept:
            notes.append(f"the {source} names no next update and could not be fetched anew")
            return None
        return RevocationResult(RevocationStatus.GOOD, source, f"not on the {source}")

    # --- OCSP --------------------------------------------------------------------------------

    def _from_ocsp(
        self,
        url: str,
        cert: x509.Certificate,
        issuer: x509.Certificate,
        at: datetime,
        notes: _Notes,
    ) -> RevocationResult | None:
        now = self._clock()
        response = self._usable_ocsp_answer(url, cert, issuer, now, notes)
        if response is None:
            return None
        source = f"ocsp {url}"
        if response.certificate_status == ocsp.OCSPCertStatus.REVOKED:
            revoked_at = response.revocation_time_utc
            if revoked_at is not None and revoked_at <= at:
                return RevocationResult(
                    RevocationStatus.REVOKED,
                    source,
                    f"revoked on {revoked_at:%Y-%m-%d %H:%M} UTC (OCSP {url})",
                    revoked_at,
                )
            return RevocationResult(RevocationStatus.GOOD, source, "revoked only after that time")
        if response.certificate_status == ocsp.OCSPCertStatus.GOOD:
            return RevocationResult(RevocationStatus.GOOD, source, f"OCSP {url} says good")
        notes.append(f"OCSP {url} does not know the certificate")
        return None

    def _usable_ocsp_answer(
        self,
        url: str,
        cert: x509.Certificate,
        issuer: x509.Certificate,
        now: datetime,
        notes: _Notes,
    ) -> ocsp.OCSPResponse | None:
        """The responder's answer about ``cert``, from the cache while it lasts, else asked
        anew; None (with a note) when none usable is to be had.

        A cached answer is judged again as a new one would be (still fresh, signed by a
        responder valid now): only the round trip is saved. One no longer usable (its
        delegated responder's certificate expired meanwhile) is dropped and the responder
        asked again at once, not only for the next message."""
        key = (url, cert.fingerprint(hashes.SHA256()))
        with self._lock:
            cached = self._ocsp_cache.get(key)
        if cached is not None and cached[1] > now:
            if _ocsp_problem(cached[0], cert, issuer, now) is None:
                return cached[0]
            with self._lock:
                self._ocsp_cache.pop(key, None)
        if self._remembered_failure(url, now, notes):
            return None
        try:
            response = self._ocsp_answer(url, cert, issuer)
        except (OSError, ValueError) as exc:
            note = f"OCSP request to {url} failed: {type(exc).__name__}: {exc}"
            self._failure(url, note, now, notes)
            return None
        if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
            # tryLater, internalError: the responder's state, not this certificate's
            note = f"OCSP answer from {url} not usable: status {response.response_status.name}"
            self._failure(url, note, now, notes)
            return None
        self._answered(url)
        problem = _ocsp_problem(response, cert, issuer, now)
        if problem is not None:
            notes.append(f"OCSP answer from {url} not usable: {problem}")
            return None
        with self._lock:
            if len(self._ocsp_cache) >= _OCSP_CACHE_SIZE:  # every partner's certificates, and more
                self._ocsp_cache = {k: v for k, v in self._ocsp_cache.items() if v[1] > now}
                if len(self._ocsp_cache) >= _OCSP_CACHE_SIZE:
                    self._ocsp_cache.clear()
            self._ocsp_cache[key] = (response, self._ocsp_expiry(response, now))
        return response

    def _ocsp_answer(
        self, url: str, cert: x509.Certificate, issuer: x509.Certificate
    ) -> ocsp.OCSPResponse:
        request = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build()
        data = self._fetcher(
            url,
            request.public_bytes(serialization.Encoding.DER),
            "application/ocsp-request",
            self._timeout,
        )
        return ocsp.load_der_ocsp_response(data)

    def _ocsp_expiry(self, response: ocsp.OCSPResponse, now: datetime) -> datetime:
        """Until when an answer is reused: its nextUpdate (or OCSP_MAX_AGE after its
        thisUpdate), at most ``cache_seconds`` - the CRLs' rule, so a busy server does not ask
        the responder once per message."""
        end = response.next_update_utc or response.this_update_utc + OCSP_MAX_AGE
        return min(end, now + timedelta(seconds=self._cache_seconds))


def _issued(crl: x509.CertificateRevocationList) -> tuple[datetime, int]:
    """When a CRL was issued, its CRL number breaking a tie (the later of two is the newer)."""
    try:
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        number = -1
    return crl.last_update_utc, number


def _scope_problem(crl: x509.CertificateRevocationList, cert: x509.Certificate) -> str | None:
    """Why ``crl`` does not tell the whole status of ``cert``, or None when it does: a delta
    CRL lists only what changed since a base CRL; a CRL whose IssuingDistributionPoint narrows
    it (to CA or attribute certificates, to some reasons, to another issuer's certificates or
    to another distribution point, a partitioned CRL) says nothing of a certificate outside
    that scope, so its not listing one is no proof of anything."""
    extensions = crl.extensions
    try:
        extensions.get_extension_for_class(x509.DeltaCRLIndicator)
        return "a delta CRL lists changes only"
    except x509.ExtensionNotFound:
        pass
    try:
        point = extensions.get_extension_for_class(x509.IssuingDistributionPoint).value
    except x509.ExtensionNotFound:
        return None
    if point.only_contains_ca_certs or point.only_contains_attribute_certs:
        return "it covers CA or attribute certificates only"
    if point.only_contains_user_certs and _is_ca(cert):
        return "it covers end-entity certificates only"
    if point.only_some_reasons is not None:
        return "it covers some revocation reasons only"
    if point.indirect_crl:
        return "an indirect CRL (for another issuer's certificates) is not supported"
    if point.relative_name is not None:
        return "its distribution point is named relative to the issuer, which is not supported"
    if point.full_name is not None and not set(point.full_name) & _distribution_names(cert):
        return "it is for another distribution point than the certificate names"
    return None


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _distribution_names(cert: x509.Certificate) -> set[x509.GeneralName]:
    try:
        points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        return set()
    return {name for point in points for name in point.full_name or ()}


def _crl_signed_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    key = issuer.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        return False
    return crl.is_signature_valid(key)


def _crl_urls(cert: x509.Certificate) -> list[str]:
    try:
        points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        return []
    return [
        name.value
        for point in points
        for name in point.full_name or []
        if isinstance(name, x509.UniformResourceIdentifier)
        and name.value.lower().startswith(("http://", "https://"))
    ]


def _ocsp_urls(cert: x509.Certificate) -> list[str]:
    try:
        access = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return []
    return [
        item.access_location.value
        for item in access
        if item.access_method == AuthorityInformationAccessOID.OCSP
        and isinstance(item.access_location, x509.UniformResourceIdentifier)
    ]


def _ocsp_problem(
    response: ocsp.OCSPResponse,
    cert: x509.Certificate,
    issuer: x509.Certificate,
    now: datetime,
) -> str | None:
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        return f"status {response.response_status.name}"
    if response.serial_number != cert.serial_number:
        return "the answer is about another certificate"
    responder = _ocsp_responder(response, issuer, now)
    if responder is None:
        return "the answer is not signed by the issuer or a responder it authorised"
    key = responder.public_key()
    algorithm = response.signature_hash_algorithm
    if not isinstance(key, rsa.RSAPublicKey) or algorithm is None:
        return "unsupported OCSP signature"
    try:
        key.verify(response.signature, response.tbs_response_bytes, padding.PKCS1v15(), algorithm)
    except InvalidSignature:
        return "the answer's signature does not verify"
    if response.this_update_utc > now + _CLOCK_SKEW:
        return "the answer is dated in the future"
    next_update = response.next_update_utc
    if next_update is not None and next_update < now - _CLOCK_SKEW:
        return "the answer is out of date"
    if next_update is None and response.this_update_utc < now - OCSP_MAX_AGE - _CLOCK_SKEW:
        hours = OCSP_MAX_AGE.total_seconds() / 3600
        return f"the answer names no next update and is older than {hours:.0f} hours"
    return None


def _ocsp_responder(
    response: ocsp.OCSPResponse, issuer: x509.Certificate, now: datetime
) -> x509.Certificate | None:
    """The issuer, or a responder certificate it issued for OCSP signing that is valid now
    (RFC 6960 4.2.2.2: an expired one's key may be long out of its holder's hands)."""
    if _responder_is(response, issuer):
        return issuer
    for candidate in response.certificates:
        if not _responder_is(response, candidate):
            continue
        if not candidate.not_valid_before_utc <= now <= candidate.not_valid_after_utc:
            continue
        try:
            candidate.verify_directly_issued_by(issuer)
            usage = candidate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
            continue
        if ExtendedKeyUsageOID.OCSP_SIGNING in usage:
            return candidate
    return None


def _responder_is(response: ocsp.OCSPResponse, cert: x509.Certificate) -> bool:
    if response.responder_name is not None:
        return response.responder_name == cert.subject
    key_hash = response.responder_key_hash
    digest = hashes.Hash(hashes.SHA1())
    digest.update(
        cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    )
    return key_hash == digest.finalize()
