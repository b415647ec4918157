"""Reading the daemon's metrics back (``genv top --enforcer URL``): what it did lately."""

from __future__ import annotations

import math
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from genv.domain import constants

MAX_PAGE_BYTES = 8 * 1024 * 1024
ACTION_COUNTERS = {
    "terminate": "genv_enforce_terminations_total",
    "kill": "genv_enforce_kills_total",
    "detach": "genv_enforce_detachments_total",
}


@dataclass(frozen=True)
class Action:
    """The latest action of one kind for one rule and user, and how many there were."""

    time: float
    action: str
    rule: str
    user: str
    count: int


@dataclass(frozen=True)
class EnforcerStatus:
    url: str
    error: str | None = None  # why nothing could be read
    last_cycle: float | None = None
    dry_run: bool = False
    violations: dict[str, int] = field(default_factory=dict)
    actions: tuple[Action, ...] = ()  # newest first
    cycle_errors: int = 0


def endpoint(text: str) -> str:
    """``HOST:PORT``, ``http://HOST:PORT`` or a full URL, as the URL of the metrics page."""
    url = text.strip()
    if "://" not in url:
        url = "http://" + url
    scheme, _, rest = url.partition("://")
    if "/" not in rest:
        url += "/metrics"
    if scheme not in ("http", "https"):
        raise ValueError(f"{text!r} is not an http URL")
    return url


def fetch(url: str, timeout: float = 2.0) -> EnforcerStatus:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310 - http(s) only
            page = answer.read(MAX_PAGE_BYTES + 1)
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        return EnforcerStatus(url, error=f"cannot read {url}: {reason}")
    if len(page) > MAX_PAGE_BYTES:
        return EnforcerStatus(url, error=f"{url} answers with more than 8 MiB")
    try:
        return parse(url, page.decode("utf-8", errors="replace"))
    except ValueError as error:
        return EnforcerStatus(url, error=f"{url} does not serve Prometheus metrics: {error}")


SANE_VALUE = constants.MAX_TIME  # (counts too: no daemon counts that far)


def parse(url: str, text: str) -> EnforcerStatus:
    samples: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            value = float(sample.value)
            # Whoever listens on the port says what they like: only values a daemon could
            # mean are kept (no infinities, no times past the year 2514).
            if math.isfinite(value) and abs(value) < SANE_VALUE:
                samples[sample.name].append((dict(sample.labels), value))
    if not any(name.startswith("genv_enforce_") for name in samples):
        raise ValueError("no genv_enforce_ metrics")
    counts: dict[tuple[str, str, str], int] = {}
    for action, name in ACTION_COUNTERS.items():
        for labels, value in samples.get(name, []):
            counts[(action, labels.get("rule", ""), labels.get("user", ""))] = int(value)
    actions = []
    for labels, value in samples.get("genv_enforce_last_action_timestamp_seconds", []):
        key = (labels.get("action", ""), labels.get("rule", ""), labels.get("user", ""))
        actions.append(Action(value, *key, count=counts.get(key, 0)))
    actions.sort(key=lambda action: action.time, reverse=True)
    last = samples.get("genv_enforce_last_cycle_timestamp_seconds", [])
    return EnforcerStatus(
        url,
        last_cycle=last[0][1] if last and last[0][1] > 0 else None,
        dry_run=any(value == 1 for _, value in samples.get("genv_enforce_dry_run", [])),
        violations={
            labels.get("rule", ""): int(value)
            for labels, value in samples.get("genv_enforce_violations", [])
        },
        actions=tuple(actions),
        cycle_errors=int(sum(v for _, v in samples.get("genv_enforce_cycle_errors_total", []))),
    )
