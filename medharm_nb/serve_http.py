"""The HTTP server under ``medharm-nb serve``: uvicorn's h11 protocol with a header timeout.

uvicorn times out an idle keep-alive connection, but not one that is still sending its
request line or headers: a client that opens a connection and sends nothing, or half a
request, holds it (and a place under uvicorn's connection cap) for ever. Here the headers
must be complete within ``Limits.header_timeout_s`` of the connection's opening, or of the
first byte of the next request on a kept-alive connection, whatever the pace of the bytes
in between (so a trickle of one byte a second does not keep it open either).
"""

from __future__ import annotations

import asyncio
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from medharm_nb.serve_request import Limits

logger = logging.getLogger(__name__)


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol; a connection whose request headers are not complete within
    ``header_timeout_s`` is closed without an answer."""

    header_timeout_s: float = Limits.header_timeout_s

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._awaiting_headers():
            self._arm()
        else:
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # A pipelined next request that arrived in part while this one was answered.
        if self._awaiting_headers() and self.conn.trailing_data[0]:
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _awaiting_headers(self) -> bool:
        return self.conn.their_state is h11.IDLE and not self.transport.is_closing()

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expired(self) -> None:
        self._header_timer = None
        if not self._awaiting_headers():
            return
        client = f"from {self.client[0]}:{self.client[1]} " if self.client else ""
        logger.info("closed a connection %sthat sent no complete request headers in %g s",
                    client, self.header_timeout_s)
        self.conn.send(h11.ConnectionClosed())
        self.transport.close()


def uvicorn_config(app, host: str, port: int, limits: Limits, **kw):
    """The uvicorn config ``serve`` runs ``app`` with (``kw``: more ``uvicorn.Config``
    arguments, e.g. ``log_level``)."""
    import uvicorn

    protocol = type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,),
                    {"header_timeout_s": limits.header_timeout_s})
    # uvicorn's own cap on connections and tasks, above ours on answers in flight, so that
    # a busy server still answers a clear 503 rather than uvicorn's bare one.
    return uvicorn.Config(app, host=host, port=port, http=protocol,
                          limit_concurrency=limits.max_concurrency * 2 + 16,
                          timeout_keep_alive=30, **kw)
