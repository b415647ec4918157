"""The metrics HTTP server: what a scraper gets, and what slow, stuck or hostile clients
(any local user can connect) cannot do to it."""

from __future__ import annotations

import contextlib
import errno
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from genv.metrics import server as server_module
from genv.metrics.server import ListenError, MetricsServer

from promkit import get

PAGE = b"# TYPE x gauge\nx 1.0\n"


def raw(port: int, request: bytes, timeout: float = 5.0) -> bytes:
    """What the server answers to ``request``, sent as is, until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout) as client:
        client.sendall(request)
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    return answer


@pytest.fixture
def served():
    server = MetricsServer("127.0.0.1", 0, lambda: PAGE).start()
    yield server
    server.close()


def test_a_scrape_gets_the_page_with_its_type_and_length(served):
    with urllib.request.urlopen(served.url, timeout=5) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/plain; version=")
        assert int(answer.headers["Content-Length"]) == len(PAGE)
        assert answer.read() == PAGE
    assert get(served.url.replace("/metrics", "/")) == PAGE
    assert get(served.url + "?name[]=x") == PAGE  # a query string changes nothing


def test_head_other_paths_and_other_methods(served):
    head = raw(served.port, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 OK\r\n")
    assert f"Content-Length: {len(PAGE)}".encode() in head
    assert head.endswith(b"\r\n\r\n")  # no body
    with pytest.raises(urllib.error.HTTPError) as missing:
        get(served.url.replace("/metrics", "/secret"))
    assert missing.value.code == 404
    post = raw(served.port, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    assert post.startswith(b"HTTP/1.0 405 ")
    assert b"Allow: GET, HEAD" in post


def test_a_page_that_fails_to_render_is_a_500_and_the_server_goes_on(caplog):
    calls = []

    def page() -> bytes:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug in rendering")
        return PAGE

    server = MetricsServer("127.0.0.1", 0, page).start()
    try:
        with pytest.raises(urllib.error.HTTPError) as failed:
            get(server.url)
        assert failed.value.code == 500
        assert get(server.url) == PAGE
    finally:
        server.close()
    assert "could not render the metrics page" in caplog.text


def test_clients_that_send_nothing_or_half_a_request_do_not_delay_a_scrape(served):
    stuck = []
    for _ in range(server_module.WORKERS * 3):  # more than there are answering threads
        client = socket.create_connection(("127.0.0.1", served.port), 5)
        client.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never ends its headers
        stuck.append(client)
    silent = [socket.create_connection(("127.0.0.1", served.port), 5) for _ in range(8)]
    try:
        started = time.monotonic()
        assert get(served.url, timeout=5) == PAGE
        assert time.monotonic() - started < 2.0
    finally:
        for client in stuck + silent:
            client.close()


def test_a_client_that_trickles_its_request_is_dropped_at_the_deadline(monkeypatch):
    monkeypatch.setattr(server_module, "CLIENT_TIMEOUT_S", 1.0)
    server = MetricsServer("127.0.0.1", 0, lambda: PAGE).start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), 5) as client:
            client.sendall(b"G")  # handed to an answering thread: the request is not all there
            dropped = None
            started = time.monotonic()
            for byte in b"ET /metrics HTTP/1.1\r\nX-Slow: " + b"a" * 100:
                try:
                    client.sendall(bytes([byte]))
                    time.sleep(0.05)
                except OSError:
                    dropped = time.monotonic() - started
                    break
            else:
                client.settimeout(5)
                assert client.recv(100) == b""  # closed, answered nothing
                dropped = time.monotonic() - started
        assert dropped is not None and dropped < 4.0
        assert get(server.url) == PAGE
    finally:
        server.close()


def test_a_request_larger_than_any_scraper_sends_is_not_answered(served):
    huge = b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * (server_module.MAX_REQUEST + 10)
    with socket.create_connection(("127.0.0.1", served.port), 5) as client:
        try:
            client.sendall(huge)
            client.settimeout(5)
            assert client.recv(100) == b""
        except ConnectionResetError:
            pass  # closed with data unread: the kernel says so with a reset
    assert get(served.url) == PAGE


def test_a_page_larger_than_the_socket_buffer_reaches_a_slow_reader_whole():
    page = bytes(range(256)) * 40_000  # about 10 MB: far more than the socket's buffers take
    server = MetricsServer("127.0.0.1", 0, lambda: page).start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), 10) as client:
            client.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            time.sleep(0.3)  # the server is left waiting for room to send
            answer = b""
            while chunk := client.recv(1 << 20):
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 200 OK")
        assert body == page
        assert get(server.url, timeout=10) == page  # and the next scrape too
    finally:
        server.close()


def test_a_flood_of_connections_leaves_the_server_serving(served):
    def connect_and_leave() -> None:
        for _ in range(50):
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", served.port), 2).close()

    flooders = [threading.Thread(target=connect_and_leave) for _ in range(4)]
    for thread in flooders:
        thread.start()
    for thread in flooders:
        thread.join(30)
    assert get(served.url, timeout=5) == PAGE


def test_close_stops_it_at_once_and_frees_the_port():
    server = MetricsServer("127.0.0.1", 0, lambda: PAGE).start()
    port = server.port
    started = time.monotonic()
    server.close()
    assert time.monotonic() - started < 2.0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), 1).close()
    MetricsServer("127.0.0.1", port, lambda: PAGE).start().close()  # the port is free again


def test_a_port_in_use_is_one_clear_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ListenError, match="in use by another program; choose another"):
            MetricsServer("127.0.0.1", port, lambda: PAGE)
    with pytest.raises(ListenError, match="no interface of this machine has that address"):
        MetricsServer("192.0.2.1", 0, lambda: PAGE)


def test_ipv6_loopback_when_the_machine_has_it():
    try:
        server = MetricsServer("::1", 0, lambda: PAGE).start()
    except ListenError:
        pytest.skip("no IPv6 loopback here")
    try:
        assert server.url.startswith("http://[::1]:")
        assert get(server.url) == PAGE
    finally:
        server.close()


def test_close_lets_go_of_waiting_clients_and_every_thread_ends():
    server = MetricsServer("127.0.0.1", 0, lambda: PAGE).start()
    stuck = []
    for _ in range(server_module.WORKERS + 6):  # some held by workers, some queued
        client = socket.create_connection(("127.0.0.1", server.port), 5)
        client.sendall(b"GET /metrics HTTP/1.1\r\n")
        stuck.append(client)
    time.sleep(0.3)
    server.close()
    try:
        deadline = time.monotonic() + 3  # not the clients' 10 s
        while any(t.name.startswith("genv-metrics") for t in threading.enumerate()):
            assert time.monotonic() < deadline, "a metrics thread outlived close()"
            time.sleep(0.1)
    finally:
        for client in stuck:
            client.close()


class FailingListener:
    """A listening socket whose accept() fails as a process out of descriptors sees it fail,
    ``failures`` times, and then works."""

    def __init__(self, listener: socket.socket, failures: int) -> None:
        self._listener = listener
        self.failures = failures

    def accept(self):  # noqa: ANN201
        if self.failures:
            self.failures -= 1
            time.sleep(0.01)
            raise OSError(errno.EMFILE, "Too many open files")
        return self._listener.accept()

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self._listener, name)


def test_running_out_of_descriptors_for_a_moment_does_not_end_serving(caplog):
    server = MetricsServer("127.0.0.1", 0, lambda: PAGE)
    failing = FailingListener(server._listener, failures=20)
    server._listener = failing  # type: ignore[assignment]
    server.start()
    try:
        assert get(server.url, timeout=10) == PAGE  # answered once accept() works again
        assert failing.failures == 0
    finally:
        server.close()
    assert caplog.text.count("the metrics server cannot accept connections") == 1
