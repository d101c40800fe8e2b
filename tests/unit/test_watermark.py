"""The watermark from shard items (stream_consumer.watermark), hypothesis over shard states."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from livemigrate.watermark import watermark_of

shard = st.fixed_dictionaries(
    {"finished": st.booleans()},
    optional={"caught_up_at": st.floats(1e9, 2e9)},
)


@given(st.dictionaries(st.text(min_size=1, max_size=4), shard, min_size=1), st.floats(0, 600))
def test_the_watermark_is_the_slowest_open_shard_less_the_margin(
    shards: dict[str, dict[str, Any]], margin: float
) -> None:
    mark = watermark_of(shards, margin)
    open_shards = [s for s in shards.values() if not s["finished"]]
    if not open_shards:
        assert mark == float("inf")
    elif any("caught_up_at" not in s for s in open_shards):
        assert mark is None  # a shard never read to its end holds everything back
    else:
        assert mark is not None
        # no open shard has read less than the watermark (plus the margin) ...
        assert all(s["caught_up_at"] >= mark + margin - 1e-6 for s in open_shards)
        # ... and it is as high as that allows
        assert any(abs(s["caught_up_at"] - (mark + margin)) < 1e-6 for s in open_shards)


def test_no_shards_no_watermark() -> None:
    assert watermark_of({}, 0.0) is None
