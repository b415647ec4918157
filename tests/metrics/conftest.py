"""Fixtures of the metrics tests: ``prometheus``, a real Prometheus (promkit)."""

from __future__ import annotations

from promkit import prometheus  # noqa: F401 - the fixture
