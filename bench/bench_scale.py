"""The scale model (bench/scale_model.py): the seed's 13.6 M-item migration in simulated time.

Prints the README's "Running at scale" table; each row is also a Result (makespan in minutes,
next to the analytic bound items x write units / cap; the longest unit of work in the note,
with the plain approach's figures). No service is used and nothing sleeps: a few seconds.
"""

from __future__ import annotations

import math

from bench import scale_model
from bench.common import Result


def run() -> list[Result]:
    rows = scale_model.table_rows()
    print(scale_model.markdown(rows), flush=True)
    results = []
    for row in rows:
        share = float(str(row["hot_share"]))
        makespan = float(str(row["tool_makespan_min"]))
        bound = float(str(row["analytic_min"]))
        plain = float(str(row["plain_makespan_min"]))
        plain_text = "never finishes" if math.isinf(plain) else f"{plain:.0f} min"
        results.append(
            Result(
                f"scale model makespan, hot key {share:.0%}",
                makespan,
                "min",
                bound,
                makespan / bound,
                f"baseline: analytic bound; longest unit "
                f"{float(str(row['tool_longest_unit_min'])):.1f} min (limit 15); plain "
                f"200-item segments: {plain_text}, longest Lambda "
                f"{float(str(row['plain_longest_unit_min'])) * 60:.0f} s",
            )
        )
    return results
