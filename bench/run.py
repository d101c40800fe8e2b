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


def main() -> int:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    only = sys.argv[1:]
    results: list[Result] = []
    for name in discover():
        if only and not any(o in name for o in only):
            continue
        print(f"== {name}", flush=True)
        results.extend(importlib.import_module(name).run())
    if not results:
        print("no benchmarks found", file=sys.stderr)
        return 1
    print(f"\n{'benchmark':52} {'value':>12} {'baseline':>12} {'ratio':>7}  unit")
    for r in results:
        base = f"{r.baseline:12.1f}" if r.baseline is not None else f"{'-':>12}"
        ratio = f"{r.ratio:7.2f}" if r.ratio is not None else f"{'-':>7}"
        print(f"{r.name:52} {r.value:12.1f} {base} {ratio}  {r.unit}  {r.note}")
    out = HERE / "results.json"
    out.write_text(json.dumps([r.as_json() for r in results], indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
