"""``make bench``: run every ``bench/bench_*.py``, print a table, write ``bench/results.json``.

Each module exposes ``run() -> list[Result]``. Figures are measured side by side in one run
(this tool vs a plain baseline on the same server) because these machines are noisy.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import sys
from pathlib import Path

from bench.common import Result

HERE = Path(__file__).parent


def discover() -> list[str]:
    return sorted(
        f"bench.{m.name}" for m in pkgutil.iter_modules([str(HERE)]) if m.name.startswith("bench_")
    )


def _figure(value: float) -> str:
    # Per-item request counts are fractions: show them with enough digits.
    return f"{value:12.4f}" if abs(value) < 10 else f"{value:12.1f}"


def main() -> int:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    only = sys.argv[1:]
    results: list[Result] = []
    problems: list[str] = []
    for name in discover():
        if only and not any(o in name for o in only):
            continue
        print(f"== {name}", flush=True)
        module = importlib.import_module(name)
        found = module.run()
        results.extend(found)
        # A module with check() fails the bench on figures past their reference (costs).
        if hasattr(module, "check"):
            problems.extend(module.check(found))
    if not results:
        print("no benchmarks found", file=sys.stderr)
        return 1
    print(f"\n{'benchmark':52} {'value':>12} {'baseline':>12} {'ratio':>7}  unit")
    for r in results:
        base = _figure(r.baseline) if r.baseline is not None else f"{'-':>12}"
        # Three decimals: a median of 0.9468 printed as 0.95 read as a target met.
        ratio = f"{r.ratio:7.3f}" if r.ratio is not None else f"{'-':>7}"
        print(f"{r.name:52} {_figure(r.value)} {base} {ratio}  {r.unit}  {r.note}")
    out = HERE / "results.json"
    out.write_text(json.dumps([r.as_json() for r in results], indent=2) + "\n")
    print(f"\nwrote {out}")
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
