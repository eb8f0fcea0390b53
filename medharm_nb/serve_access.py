"""Whom ``medharm-nb serve`` answers: the address it binds, and the checks every request
passes before it is read.

Loopback is not a security boundary: every user of the machine reaches 127.0.0.1, and so does
every web page open in a browser there, by a cross-site request or by DNS rebinding (a name
the attacker controls, re-pointed at 127.0.0.1). So the server answers only the ``Host``
names it serves, refuses cross-site requests (a foreign ``Origin``, no CORS) and POSTs that
are not ``application/json`` (the "simple" requests a browser sends without asking first),
and, with ``MEDHARM_SERVE_TOKEN`` set, on loopback too, wants the bearer token.
"""

from __future__ import annotations

import hmac
import ipaddress
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

TOKEN_ENV = "MEDHARM_SERVE_TOKEN"
"""Environment variable holding the bearer token clients must send (never a CLI argument,
so it does not show in ``ps`` or shell history)."""
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
"""``Host`` names every server answers, wherever it is bound."""
_ANY_ADDRESS = frozenset({"0.0.0.0", "::", ""})
_SAFE_FETCH_SITES = ("none", "same-origin")  # typed by the user, or a page of this server


class ServeError(ValueError):
    """The server cannot start as asked (e.g. a public address without a token)."""


class ApiError(Exception):
    """An error answered to the client in the OpenAI error shape."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param
        self.headers = headers or {}


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to a public address


def check_bind(host: str, token: str | None) -> None:
    """Refuse a non-loopback address unless a token guards it.

    Raises:
        ServeError: naming the address and the variable to set.
    """
    if not is_loopback(host) and not token:
        raise ServeError(f"refusing to serve on {host}, which other machines can reach, "
                         f"without a bearer token: set {TOKEN_ENV} in the environment (every "
                         f"client must then send it), or bind 127.0.0.1")


def _host_name(authority: str) -> str:
    """A ``Host`` header's name or address, lower case, without port, brackets or final dot."""
    authority = authority.strip().lower()
    if authority.startswith("["):  # [::1]:8000
        return authority[1:authority.find("]")] if "]" in authority else authority
    if authority.count(":") == 1:  # name:port (more colons: a bare IPv6 address)
        authority = authority.split(":")[0]
    return authority.rstrip(".")


@dataclass(frozen=True)
class Access:
    """Whom the server answers: the hosts it serves, and the bearer token if one is set."""

    hosts: frozenset[str]
    """Names and addresses a request's ``Host`` may name (lower case)."""
    any_address: bool = False
    """Bound to every interface, so any IP address in ``Host`` is ours. (DNS rebinding
    needs a name: a page on evil.example sends ``Host: evil.example``, never an address.)"""
    token: str | None = None

    @classmethod
    def for_bind(cls, bind: str, allow_hosts: Iterable[str] = (),
                 token: str | None = None) -> Access:
        """The loopback names, the bound address (and, bound beyond loopback, this machine's
        host name) and ``allow_hosts``."""
        name = _host_name(bind)
        hosts = set(LOOPBACK_NAMES) | {_host_name(h) for h in allow_hosts}
        if name not in _ANY_ADDRESS:
            hosts.add(name)
        if not is_loopback(name):
            hosts.add(socket.gethostname().lower())
        return cls(frozenset(hosts), name in _ANY_ADDRESS, token)

    def serves(self, host: str) -> bool:
        """Whether a ``Host`` header names this server."""
        name = _host_name(host)
        if name in self.hosts:
            return True
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            return False
        return address.is_loopback or self.any_address


def check_access(method: str, headers: Mapping[str, str], access: Access) -> ApiError | None:
    """The error a request gets before it is read, or None when it may be answered.

    In order: a ``Host`` the server does not serve (421: DNS rebinding), a cross-site
    request (403: a foreign ``Origin`` or ``Sec-Fetch-Site``), a missing or wrong bearer token
    (401), a POST whose body is not declared ``application/json`` (415: the cross-site
    "simple" POSTs a browser sends without asking, as text/plain or a form).
    """
    host = headers.get("host") or ""
    if not access.serves(host):
        return ApiError(421, f"this server does not serve the host {host[:100]!r} (a request "
                             f"for another name is refused, against DNS rebinding); if "
                             f"clients reach it by that name, start it with --allow-host NAME",
                        kind="permission_error")
    origin = headers.get("origin")
    if origin is not None and not _same_origin(origin, host):
        return ApiError(403, f"cross-site request from origin {origin[:100]!r} refused: this "
                             f"API is not for web pages on other sites (no CORS)",
                        kind="permission_error")
    site = headers.get("sec-fetch-site")
    if site is not None and site.lower() not in _SAFE_FETCH_SITES:
        return ApiError(403, f"cross-site request refused (Sec-Fetch-Site: {site[:20]})",
                        kind="permission_error")
    if access.token is not None:
        sent = headers.get("authorization", "")
        if not hmac.compare_digest(sent.encode(), f"Bearer {access.token}".encode()):
            return ApiError(401, "missing or wrong bearer token (Authorization: Bearer ...)",
                            kind="authentication_error", headers={"WWW-Authenticate": "Bearer"})
    if method in ("POST", "PUT", "PATCH"):
        media = (headers.get("content-type") or "").split(";")[0].strip().lower()
        if media != "application/json":
            return ApiError(415, f"the request body must be JSON sent as Content-Type: "
                                 f"application/json, not {media[:60] or 'none'!r}",
                            param="Content-Type")
    return None


def _same_origin(origin: str, host: str) -> bool:
    """An ``Origin`` of this very server (scheme http(s), same host and port)."""
    parts = urlsplit(origin.strip())
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.strip().lower()
