"""Combining the rules' findings into one plan: each process terminated once, each attachment
detached once, and the lines to print in the order the product description shows them."""

from __future__ import annotations

from genv.domain.values import value
from genv.enforce.findings import Detachment, Finding, Termination


@value
class Plan:
    findings: tuple[Finding, ...]
    terminations: tuple[Termination, ...]
    detachments: tuple[Detachment, ...]

    @property
    def empty(self) -> bool:
        return not self.findings


def combine(findings: list[Finding]) -> Plan:
    terminations: dict[int, Termination] = {}
    detachments: dict[tuple[int, str, int], Detachment] = {}
    for finding in findings:
        for termination in finding.terminations:
            terminations.setdefault(termination.process.pid, termination)
        for detachment in finding.detachments:
            key = (detachment.uid, detachment.eid, detachment.device_index)
            detachments.setdefault(key, detachment)
    return Plan(tuple(findings), tuple(terminations.values()), tuple(detachments.values()))
