"""The one back-off policy: capped exponential delays, with jitter where many retriers meet.

Every retry loop in livemigrate waits through it (the rate limiter on throttling, the stream
consumer's reads and applies, endpoint outages, the search sink and resync, the KCL processor),
so "how long before the next try" has one definition (issue 19).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# 2**62 times any sensible base is past any cap; bounding the exponent keeps a long outage's
# failure count from overflowing the float.
_MAX_DOUBLINGS = 62


@dataclass(frozen=True)
class Backoff:
    """``base * 2**(attempt - 1)`` seconds, at most ``cap``.

    Parameters
    ----------
    base:
        The first delay (attempt 1), in seconds.
    cap:
        The longest delay, in seconds.
    jitter:
        Wait a random share of the delay, between half and all of it, so that workers throttled
        together do not retry together.
    """

    base: float
    cap: float
    jitter: bool = True

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retrying after failed attempt ``attempt`` (counting from 1)."""
        doublings = min(max(0, attempt - 1), _MAX_DOUBLINGS)
        ceiling = float(min(self.cap, self.base * 2.0**doublings))
        return ceiling * random.uniform(0.5, 1.0) if self.jitter else ceiling
