"""``genv monitor``'s exporter: collect every ``interval`` seconds, render the page once, serve it.

A scrape is handed the page rendered after the last collection, so it costs a copy and never
waits for, runs or slows a collection however many environments the machine has.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from genv.errors import GenvError
from genv.metrics.families import DEFAULT_MAX_PROCESS_SERIES, usage_families
from genv.metrics.source import HostSample, Source
from genv.system import logs

log = logs.logger("genv.metrics")


class _Families:
    """A prometheus-client collector that hands over what was built last."""

    def __init__(self) -> None:
        self.families: list[Metric] = []

    def collect(self) -> Iterable[Metric]:
        return list(self.families)


class Exporter:
    def __init__(
        self,
        source: Source,
        max_process_series: int = DEFAULT_MAX_PROCESS_SERIES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.source = source
        self.max_process_series = max_process_series
        self.clock = clock
        self.registry = CollectorRegistry(auto_describe=False)
        self._families = _Families()
        self.registry.register(self._families)
        self._page = b""
        self._errors = 0
        self._last_success: float | None = None
        self._problem: str | None = None
        self._stop = threading.Event()
        self._attempted: float | None = None  # monotonic time of the last collection

    def page(self) -> bytes:
        """The page as rendered after the last collection (what a scrape gets)."""
        return self._page

    def collect_once(self, strict: bool = False) -> list[HostSample] | None:
        """Read the source, build the metrics and render the page. A failure is counted and
        logged when it starts and when it ends; the page then has only the exporter's own
        metrics (no stale usage passed off as current); with ``strict`` (the first
        collection, at start-up) it is raised instead."""
        begun = time.perf_counter()
        self._attempted = time.monotonic()
        samples: list[HostSample] | None
        try:
            samples = self.source.collect()
        except GenvError as error:
            if strict:
                raise
            samples = None
            self._errors += 1
            if str(error) != self._problem:
                log.warning("cannot read the machine: %s", error)
            self._problem = str(error)
        else:
            if self._problem is not None:
                log.info("reading the machine again")
            self._problem = None
            self._last_success = self.clock()
        families = (
            usage_families(samples, self.source.cluster, self.max_process_series)
            if samples is not None
            else []
        )
        self._families.families = families + self._own(time.perf_counter() - begun)
        self._page = generate_latest(self.registry)
        return samples

    def _own(self, duration: float) -> list[Metric]:
        """The exporter's own health: when it last read the machine, how long that took,
        and how often it failed."""
        last = GaugeMetricFamily(
            "genv_exporter_last_collection_timestamp_seconds",
            "Time of the last collection that read the machine (Unix seconds)",
        )
        if self._last_success is not None:
            last.add_metric([], self._last_success)
        took = GaugeMetricFamily(
            "genv_exporter_collection_duration_seconds",
            "Seconds the last collection took (reading the machine and building the metrics)",
            value=duration,
        )
        errors = CounterMetricFamily(
            "genv_exporter_collection_errors",
            "Collections that could not read the machine",
            value=self._errors,
        )
        return [last, took, errors]

    def run(self, interval: float) -> None:
        """Collect every ``interval`` seconds until ``stop`` (the first one ``interval`` after
        the last ``collect_once``, if there was one)."""
        due = time.monotonic() if self._attempted is None else self._attempted + interval
        while not self._stop.wait(max(0.0, due - time.monotonic())):
            due = time.monotonic() + interval
            try:
                self.collect_once()
            except Exception:  # a bug must not end monitoring
                log.exception("collecting metrics failed; trying again next time")

    def stop(self, *_: object) -> None:
        self._stop.set()
