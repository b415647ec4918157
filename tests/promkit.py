"""What the metrics tests share: a real Prometheus, endpoints, and metrics pages.

- ``Prometheus``: Debian's ``prometheus`` on a free loopback port with a scrape configuration
  of the test's targets (scraped every second), in a folder of its own; ``query`` asks its
  HTTP API (PromQL), ``wait_for`` until a query's answer satisfies a check.
- ``free_port``: a loopback port nobody listens on; ``wait_http``: an endpoint once it answers.
- ``samples_of``: a metrics page as {series name: [(labels, value)]}.
- ``prometheus``: the fixture (a conftest imports it): a Prometheus, stopped and removed after
  the test; skipped where ``prometheus`` is not installed, failed in CI (``.ci/run`` installs
  it).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

STARTUP_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        return answer.read()


def wait_http(url: str, timeout: float = 30.0, alive: Callable[[], bool] | None = None) -> bytes:
    """The body at ``url`` once it answers; fails when ``alive`` says the server died."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return get(url, timeout=2.0)
        except (urllib.error.URLError, OSError) as error:
            if alive is not None and not alive():
                raise AssertionError(f"the server of {url} exited before answering") from error
            if time.monotonic() > deadline:
                raise AssertionError(f"{url} did not answer within {timeout}s: {error}") from None
            time.sleep(0.1)


class Prometheus:
    def __init__(self, binary: str, folder: Path) -> None:
        self.binary = binary
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, jobs: dict[str, list[str]]) -> Prometheus:
        """Scrape each job's targets (``host:port``) every second."""
        lines = ["global:", "  scrape_interval: 1s", "  scrape_timeout: 1s", "scrape_configs:"]
        for job, targets in jobs.items():
            lines += [
                f"  - job_name: {json.dumps(job)}",
                "    static_configs:",
                "      - targets: [" + ", ".join(json.dumps(t) for t in targets) + "]",
            ]
        config = self.folder / "prometheus.yml"
        config.write_text("\n".join(lines) + "\n")
        self.log = open(self.folder / "prometheus.log", "wb")  # noqa: SIM115 - closed in stop
        self.process = subprocess.Popen(
            [
                self.binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.log,
            start_new_session=True,
        )
        wait_http(f"{self.url}/-/ready", STARTUP_TIMEOUT, alive=self.alive)
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def api(self, path: str, **parameters: str) -> dict:
        query = urllib.parse.urlencode(parameters)
        try:
            body = get(f"{self.url}/api/v1/{path}?{query}")
        except urllib.error.HTTPError as error:
            body = error.read()
        return json.loads(body)

    def query(self, expr: str) -> list[tuple[dict[str, str], float]]:
        """An instant query: (labels, value) per series."""
        answer = self.api("query", query=expr)
        assert answer["status"] == "success", (expr, answer)
        result = answer["data"]["result"]
        if answer["data"]["resultType"] == "scalar":
            return [({}, float(result[1]))]
        return [(series["metric"], float(series["value"][1])) for series in result]

    def wait_for(
        self,
        expr: str,
        check: Callable[[list[tuple[dict[str, str], float]]], bool],
        timeout: float = 30.0,
    ) -> list[tuple[dict[str, str], float]]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.query(expr)
            if check(found):
                return found
            if time.monotonic() > deadline:
                targets = self.api("targets")
                raise AssertionError(f"{expr}: {found} after {timeout}s; targets: {targets}")
            time.sleep(0.2)

    def value(self, expr: str, **labels: str) -> float | None:
        """The value of the one series of ``expr`` with ``labels`` (None when there is none)."""
        matches = [
            value
            for got, value in self.query(expr)
            if all(got.get(key, "") == wanted for key, wanted in labels.items())  # "" is absent
        ]
        assert len(matches) <= 1, (expr, labels, matches)
        return matches[0] if matches else None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        with contextlib.suppress(AttributeError):
            self.log.close()


def samples_of(page: bytes) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(page.decode()):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


@pytest.fixture
def prometheus() -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    if binary is None:
        if os.environ.get("CI"):  # .ci/run installs it: missing there is a failure
            pytest.fail("prometheus is not installed, though .ci/run installs it")
        pytest.skip("prometheus is not installed (apt-get install prometheus)")
    folder = Path(tempfile.mkdtemp(prefix="genvprom-"))
    server = Prometheus(binary, folder)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
