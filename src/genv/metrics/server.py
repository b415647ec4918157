"""Serving a metrics page over HTTP, in threads of its own.

The page is produced by a callable that never waits for anything slow: the exporter hands
back the page it rendered after its last collection, the daemon renders its counters. So a
scrape never waits for a collection or an enforcement cycle.

Just enough HTTP for a scraper: the request line is read, the headers are skipped, one
answer is sent and the connection closed (HTTP/1.0). The listening socket accepts a
connection once its request has come in (``TCP_DEFER_ACCEPT``), and the accepting thread
answers a request that came in whole, with a page that fits the socket's buffer, itself,
without waiting for anything; any other client is handed to one of a few answering
threads, where a slow or stuck one holds its thread for at most CLIENT_TIMEOUT_S. A scrape
then costs the page and a few system calls: http.server's parsing of every header (through
the email package) and a thread's wake-up cost a daemon more than its cycles between two
scrapes.
"""

from __future__ import annotations

import contextlib
import errno
import queue
import socket
import threading
import time
from collections.abc import Callable

from prometheus_client.exposition import CONTENT_TYPE_LATEST

from genv.domain import validate
from genv.errors import GenvError
from genv.system import logs

log = logs.logger("genv.metrics")

DEFAULT_ADDRESS = "127.0.0.1"  # metrics name users and processes: not for the network
CLIENT_TIMEOUT_S = 10.0  # a client that has not sent its request, or taken the answer, by then
WORKERS = 4  # threads answering the clients the accepting thread cannot answer at once
QUEUED = 64  # connections waiting for one of them; more are closed at once
BACKLOG = 1024  # connections the kernel holds for accept() (at most net.core.somaxconn)
MIN_RATE = 256 * 1024  # bytes a second a client takes the answer at, at least
MAX_REQUEST = 16384  # bytes of a request's line and headers; a scraper sends a few hundred
DEFER_ACCEPT_S = 1  # the kernel holds a connection this long for its request (then hands it)
# Errors of accept() that mean the listening socket is closed or shut down (by ``close``);
# any other (the client went away, out of descriptors, a firewall) passes: the server goes on.
_CLOSED = frozenset({errno.EBADF, errno.EINVAL, errno.ENOTSOCK})
_CONTENT_TYPE = f"Content-Type: {CONTENT_TYPE_LATEST}\r\n".encode()
_TEXT = b"Content-Type: text/plain; charset=utf-8\r\n"
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error"}


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
    if not validate.decimal(port_text) or not 0 < int(port_text) < 65536:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    if not address:
        raise ValueError(f"{text!r}: the address is empty")
    return address, int(port_text)


def answer(request: bytes, page: Callable[[], bytes]) -> tuple[bytes, bytes]:
    """The answer to a request whose line is ``request``: its head (status line and headers)
    and its body (the page itself, not a copy: slow clients share it)."""
    method, _, rest = request.partition(b" ")
    target = rest.partition(b" ")[0].partition(b"?")[0]
    if method not in (b"GET", b"HEAD"):
        return _response(
            405, b"only GET and HEAD are answered here\n", True, _TEXT + b"Allow: GET, HEAD\r\n"
        )
    body = method == b"GET"
    if target not in (b"/", b"/metrics"):
        return _response(404, b"only /metrics is here\n", body)
    try:
        rendered = page()
    except Exception:  # a bug in rendering must not kill the server thread
        log.exception("could not render the metrics page")
        return _response(500, b"the metrics could not be rendered\n", body)
    return _response(200, rendered, body, _CONTENT_TYPE)


def _response(status: int, page: bytes, body: bool, headers: bytes = _TEXT) -> tuple[bytes, bytes]:
    head = (
        (
            f"HTTP/1.0 {status} {_REASONS[status]}\r\nContent-Length: {len(page)}\r\n"
            "Connection: close\r\n"
        ).encode()
        + headers
        + b"\r\n"
    )
    return head, page if body else b""


def request_line(received: bytes) -> bytes | None:
    """The request line, once ``received`` holds the whole head (line and headers)."""
    if b"\r\n\r\n" not in received and b"\n\n" not in received:
        return None
    return received.split(b"\n", 1)[0].rstrip(b"\r")


class _Client:
    """One connection: what it sent so far, and what is left to send it."""

    def __init__(self, connection: socket.socket) -> None:
        self.connection = connection
        self.received = b""
        self.unsent: list[memoryview] | None = None  # the answer's parts not sent yet
        self.deadline = time.monotonic() + CLIENT_TIMEOUT_S

    def answered(self, head: bytes, body: bytes) -> None:
        self.unsent = [memoryview(head), memoryview(body)]

    def send_some(self) -> bool:
        """Send what the socket takes of the answer (once); True when it is all sent."""
        unsent = self.unsent or []
        sent = self.connection.sendmsg([part for part in unsent if part])
        for index, part in enumerate(unsent):
            taken = min(sent, len(part))
            unsent[index] = part[taken:]
            sent -= taken
        return not any(unsent)


class MetricsServer:
    """An HTTP server for one page, started on ``start`` and stopped on ``close``."""

    def __init__(self, address: str, port: int, page: Callable[[], bytes]) -> None:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((address, port))
            listener.listen(BACKLOG)
        except OSError as error:
            listener.close()
            raise ListenError(_listen_error(address, port, error)) from None
        if hasattr(socket, "TCP_DEFER_ACCEPT"):  # Linux: no wake-up before the request
            with contextlib.suppress(OSError):
                listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, DEFER_ACCEPT_S)
        self._listener = listener
        self._address = listener.getsockname()
        self._page = page
        self._closing = False
        self._queue: queue.Queue[_Client | None] = queue.Queue(maxsize=QUEUED)
        self._active: set[_Client] = set()  # the clients the answering threads are serving
        self._thread = threading.Thread(target=self._accept, name="genv-metrics-http", daemon=True)
        self._workers = [
            threading.Thread(target=self._work, name=f"genv-metrics-{n}", daemon=True)
            for n in range(WORKERS)
        ]

    @property
    def port(self) -> int:
        return int(self._address[1])

    @property
    def url(self) -> str:
        host = str(self._address[0])
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.port}/metrics"

    def start(self) -> MetricsServer:
        for worker in self._workers:
            worker.start()
        self._thread.start()
        return self

    def close(self) -> None:
        self._closing = True
        with contextlib.suppress(OSError):  # wakes accept() (EINVAL) on Linux
            self._listener.shutdown(socket.SHUT_RDWR)
        if self._thread.is_alive():
            self._thread.join(5)
        self._listener.close()
        for client in list(self._active):  # wakes the threads waiting on them
            with contextlib.suppress(OSError):
                client.connection.shutdown(socket.SHUT_RDWR)
        while True:  # the clients still waiting are let go, so that every worker can stop
            try:
                waiting = self._queue.get_nowait()
            except queue.Empty:
                break
            if waiting is not None:
                waiting.connection.close()
        for _ in self._workers:
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(None)

    # -- the accepting thread ----------------------------------------------------------

    def _accept(self) -> None:
        """Accept connections, sleeping in the kernel in between (no wake-up to look for a
        shutdown: ``close`` shuts the socket down, which wakes it)."""
        failing = False
        while not self._closing:
            try:
                connection, _ = self._listener.accept()
            except OSError as error:
                if self._closing or error.errno in _CLOSED:
                    return
                if not failing:  # said once until a connection is accepted again
                    log.warning("the metrics server cannot accept connections: %s", error)
                failing = True
                time.sleep(0.05)  # out of descriptors: let the daemon's cycle have them
                continue
            failing = False
            client = _Client(connection)
            try:
                if self._serve_at_once(client):
                    connection.close()
                    continue
            except OSError:
                connection.close()
                continue
            except Exception:  # a bug must not end serving
                log.exception("a metrics request failed")
                connection.close()
                continue
            try:
                self._queue.put_nowait(client)
            except queue.Full:  # too many slow clients at once: drop this one
                connection.close()

    def _serve_at_once(self, client: _Client) -> bool:
        """Answer ``client`` without waiting: True when done, False when it is to be handed
        to an answering thread (its request is not all there, or the answer does not fit)."""
        connection = client.connection
        connection.setblocking(False)
        try:
            client.received = connection.recv(MAX_REQUEST + 1)
        except BlockingIOError:
            return False
        if not client.received:
            return True  # closed before asking anything
        line = request_line(client.received)
        if line is None:
            return len(client.received) > MAX_REQUEST
        client.answered(*answer(line, self._page))
        try:
            return client.send_some()
        except BlockingIOError:
            return False

    # -- the answering threads ----------------------------------------------------------

    def _work(self) -> None:
        while (client := self._queue.get()) is not None:
            self._active.add(client)
            try:
                if not self._closing:
                    self._finish(client)
            except OSError:  # timed out, reset: the client went away
                log.debug("a metrics client went away")
            except Exception:  # a bug must not end this thread
                log.exception("a metrics request failed")
            finally:
                self._active.discard(client)
                client.connection.close()

    def _finish(self, client: _Client) -> None:
        """Read the rest of ``client``'s request and answer it, or send what is left of
        its answer, all within its deadline."""
        connection = client.connection
        while client.unsent is None:
            line = request_line(client.received)
            if line is not None:
                client.answered(*answer(line, self._page))
                break
            if len(client.received) > MAX_REQUEST:
                return
            connection.settimeout(_left(client))
            chunk = connection.recv(4096)
            if not chunk:
                return
            client.received += chunk
        # The answer is given time by its size: a reader slower than MIN_RATE (one taking a
        # byte now and then, to hold this thread) is dropped.
        remaining: int = sum(map(len, client.unsent or []))
        client.deadline = max(client.deadline, time.monotonic()) + remaining / MIN_RATE
        done = not remaining
        while not done:
            connection.settimeout(min(_left(client), CLIENT_TIMEOUT_S))
            done = client.send_some()


def _left(client: _Client) -> float:
    left = client.deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the metrics client is too slow")
    return left


def _listen_error(address: str, port: int, error: OSError) -> str:
    where = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    if isinstance(error, socket.gaierror):
        return f"cannot serve metrics on {address}: {error.strerror}"
    if error.errno == errno.EADDRINUSE:
        reason = "the port is in use by another program; choose another port"
    elif error.errno == errno.EADDRNOTAVAIL:
        reason = "no interface of this machine has that address"
    elif error.errno == errno.EACCES:
        reason = "permission denied (ports below 1024 need root)"
    else:
        reason = error.strerror or str(error)
    return f"cannot serve metrics on {where}: {reason}"
