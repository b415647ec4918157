"""Fixtures of the genv top tests: ``terminal``, a real terminal (tmuxkit)."""

from __future__ import annotations

from tmuxkit import terminal  # noqa: F401 - the fixture
