"""Benchmark plumbing: every benchmark returns Results measured side by side in one run."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Result:
    """One figure, next to the plain baseline measured in the same run on the same server.

    ``ratio`` is value / baseline for rates (higher is better) as reported by the benchmark;
    its meaning is in ``note``.
    """

    name: str
    value: float
    unit: str
    baseline: float | None
    ratio: float | None
    note: str = ""

    def as_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Rounds:
    """Seconds of a tool and its baseline, measured in turns (see ``take_turns``)."""

    tool: list[float]
    base: list[float]

    @property
    def ratios(self) -> list[float]:
        """Each round's throughput ratio, tool / baseline (same work: base s / tool s)."""
        return [b / t for t, b in zip(self.tool, self.base, strict=True)]

    @property
    def median(self) -> float:
        return statistics.median(self.ratios)

    def listed(self) -> str:
        return ", ".join(f"{r:.3f}" for r in self.ratios)


def take_turns(tool: Callable[[], float], base: Callable[[], float], rounds: int) -> Rounds:
    """``rounds`` rounds of one run each of ``tool`` and ``base`` (each returns its seconds),
    who goes first alternating.

    The shared machine's speed drifts within seconds (the same work's server time moves by up
    to a third within a minute), so one round's ratio says little: the median of the rounds'
    ratios is the figure, with every round listed beside it.
    """
    out = Rounds([], [])
    for n in range(rounds):
        if n % 2:
            out.tool.append(tool())
            out.base.append(base())
        else:
            out.base.append(base())
            out.tool.append(tool())
    return out
