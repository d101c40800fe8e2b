"""Benchmark plumbing: every benchmark returns Results measured side by side in one run."""

from __future__ import annotations

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
