"""Serving a metrics page over HTTP, in threads of its own.

The page is produced by a callable that never waits for anything slow: the exporter hands
back the page it rendered after its last collection, the daemon renders its counters. So a
scrape never waits for a collection or an enforcement cycle, and a slow or stuck client
holds one of a few answering threads for at most CLIENT_TIMEOUT_S.
"""

from __future__ import annotations

import contextlib
import errno
import queue
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from prometheus_client.exposition import CONTENT_TYPE_LATEST

from genv.errors import GenvError
from genv.system import logs

log = logs.logger("genv.metrics")

DEFAULT_ADDRESS = "127.0.0.1"  # metrics name users and processes: not for the network
CLIENT_TIMEOUT_S = 10.0  # a client that sends nothing is dropped after this
WORKERS = 4  # threads answering requests
QUEUED = 64  # connections waiting for one of them; more are closed at once


class ListenError(GenvError):
    """The metrics address cannot be listened on (in use, not ours)."""


def parse_listen(text: str, default_address: str = DEFAULT_ADDRESS) -> tuple[str, int]:
    """``PORT``, ``ADDRESS:PORT`` or ``[IPV6]:PORT`` as (address, port); ValueError if not."""
    text = text.strip()
    address, port_text = default_address, text
    if text.startswith("["):
        inside, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{text!r} is not [ADDRESS]:PORT")
        address, port_text = inside, rest[1:]
    elif ":" in text:
        address, _, port_text = text.rpartition(":")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    if not address:
        raise ValueError(f"{text!r}: the address is empty")
    return address, int(port_text)


class _Server(HTTPServer):
    """Requests are answered by a few long-lived threads: a flood of connections (any local
    user can open them) queues up instead of making the daemon start a thread for each."""

    allow_reuse_address = True
    page: Callable[[], bytes]
    workers = WORKERS

    def server_activate(self) -> None:
        super().server_activate()
        self._queue: queue.Queue[tuple[Any, Any] | None] = queue.Queue(maxsize=QUEUED)
        self._threads = [
            threading.Thread(target=self._work, name=f"genv-metrics-{n}", daemon=True)
            for n in range(self.workers)
        ]
        for thread in self._threads:
            thread.start()

    def process_request(self, request: Any, client_address: Any) -> None:
        try:
            self._queue.put_nowait((request, client_address))
        except queue.Full:  # too many clients at once: drop this one
            self.shutdown_request(request)

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            request, client_address = item
            try:
                self.finish_request(request, client_address)
            except Exception:
                self.handle_error(request, client_address)
            finally:
                self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("a metrics client went away: %s", client_address)

    def server_close(self) -> None:
        super().server_close()
        for _ in getattr(self, "_threads", ()):  # none when binding failed
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(None)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = CLIENT_TIMEOUT_S

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        self._answer(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(body=False)

    def _answer(self, body: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path not in ("/", "/metrics"):
            self.send_error(404, "only /metrics is here")
            return
        try:
            page = self.server.page()
        except Exception:  # a bug in rendering must not kill the server thread
            log.exception("could not render the metrics page")
            self.send_error(500, "the metrics could not be rendered")
            return
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        if body:
            self.wfile.write(page)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """Scrapes are not news: nothing is logged per request."""


class MetricsServer:
    """An HTTP server for one page, started on ``start`` and stopped on ``close``."""

    def __init__(self, address: str, port: int, page: Callable[[], bytes]) -> None:
        server_class = _Server6 if ":" in address else _Server
        try:
            self._server = server_class((address, port), _Handler)
        except OSError as error:
            where = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
            if error.errno == errno.EADDRINUSE:
                reason = "the port is in use by another program; choose another port"
            elif error.errno == errno.EADDRNOTAVAIL:
                reason = "no interface of this machine has that address"
            elif error.errno == errno.EACCES:
                reason = "permission denied (ports below 1024 need root)"
            else:
                reason = error.strerror or str(error)
            raise ListenError(f"cannot serve metrics on {where}: {reason}") from None
        except socket.gaierror as error:
            raise ListenError(f"cannot serve metrics on {address}: {error.strerror}") from None
        self._server.page = page
        self._closing = False
        self._thread = threading.Thread(target=self._accept, name="genv-metrics-http", daemon=True)

    def _accept(self) -> None:
        """Accept connections, sleeping in the kernel in between: ``serve_forever`` would wake
        twice a second to look for a shutdown, which costs a daemon at rest more than its
        cycles. ``close`` wakes it with a connection of its own."""
        self._server.timeout = None
        while not self._closing:
            try:
                self._server.handle_request()
            except OSError:
                return

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = str(self._server.server_address[0])
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.port}/metrics"

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._closing = True
        if self._thread.is_alive():
            host = str(self._server.server_address[0])
            if host in ("0.0.0.0", "::"):
                host = "127.0.0.1" if host == "0.0.0.0" else "::1"
            with contextlib.suppress(OSError), socket.create_connection((host, self.port), 2):
                pass
            self._thread.join(5)
        self._server.server_close()
