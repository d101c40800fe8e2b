"""Benchmark plumbing: every benchmark returns Results measured side by side in one run."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient


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


def plain_dynamodb(max_pool: int = 100) -> DynamoDBClient:
    """The DynamoDB client of a plain script: boto3's defaults (parameter validation included;
    the tool's client skips it), a connection pool as large as the script's threads. Endpoint,
    region and credentials come from the environment, as the tool's do. Its own client: the
    tool installs fence and accounting hooks on its clients, which a plain script does not pay.
    """
    client: DynamoDBClient = boto3.client("dynamodb", config=Config(max_pool_connections=max_pool))
    return client
