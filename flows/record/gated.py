"""The gate's result as a run records it: the registered version, the decision and the figures it
rests on (a paired drop as the metrics `paired_line` reads). Below both the registry, which makes
it, and the reports, which show it."""

from __future__ import annotations

from dataclasses import dataclass

from tasks.gate import Decision
from tasks.paired import PairedDrop


@dataclass(frozen=True)
class Gated:
    """A registered version, the gate's decision on it and what the decision rests on."""

    version: str
    decision: Decision
    measured: dict[str, float]  # gate.candidate.*, gate.champion.*, gate.*_drop* (see `_gate`)
    champion: str | None  # the champion's version at the time, if any
    card: str  # model_card.md, with the gate's verdict
    certified: bool  # the accuracy drop certified (else, if promoted: on the point estimate)
    headline: str  # one line: verdict, compression, speed, accuracy drop (report.headline_line)


def drop_metrics(prefix: str, drop: PairedDrop) -> dict[str, float]:
    """`prefix` (the point estimate), `prefix.upper` / `.lower` (the bounds, at `.confidence`), and
    the counts: what `paired_line` reads."""
    return {prefix: drop.drop, f"{prefix}.upper": drop.upper, f"{prefix}.lower": drop.lower,
            f"{prefix}.confidence": drop.confidence, f"{prefix}.worse": drop.worse,
            f"{prefix}.better": drop.better, f"{prefix}.n": drop.n}
