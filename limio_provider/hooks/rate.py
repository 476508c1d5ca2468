"""A rate Limio accepts, learnt as a batch goes: additive increase, multiplicative decrease on a request rate.

Limio documents no rate limit. A batch therefore starts bounded only by its ``max_in_flight`` (and
``max_orders_per_second``, if given); the first 429 or 503 sets its rate a little under what Limio was
accepting, successes add to it (a little at first, then more each second without a cut), and each later 429
or 503 cuts it. Two batches against one tenant converge to equal shares, as TCP flows do: their cuts come
together, and they add the same amounts. It is a rate, not a number of requests in flight, that adapts: on a
fast connection a single request in flight can exceed a tenant's limit, so no concurrency expresses it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

#: The rate kept after a 429 or a 503, as a share of the rate before it.
DECREASE = 0.8
#: Requests per second added to the rate per second of successes, in the second after a cut; each further
#: second without one doubles it, up to 2 ** MAX_DOUBLINGS times.
INCREASE = 10.0
MAX_DOUBLINGS = 5
#: The lowest rate a batch slows down to, in requests per second.
FLOOR = 0.5
#: Seconds after a cut during which requests still meet the excess it answered (Limio counts what arrived
#: before it): their 429s cut no further.
HOLD = 0.1


class AdaptiveRate:
    """The request rate one batch sends at, shared by its threads and its hook.

    :meth:`turn` takes the next departure at the current rate (the batch, before recording an order as sent);
    the hook calls :meth:`depart` right before each request leaves (it uses a turn this thread holds, else
    takes one), :meth:`succeeded` on each 2xx and :meth:`backoff` before each retry.

    :param ceiling: never more than this many requests per second (``max_orders_per_second``); ``None``: no
        ceiling.
    :param sleep: how to wait (injectable for tests).
    :param clock: a monotonic clock in seconds (injectable for tests).
    """

    def __init__(
        self,
        ceiling: float | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ceiling = ceiling
        self.rate: float | None = None  # learnt: None until Limio first says too fast
        self._sleep, self._clock = sleep, clock
        self._lock = threading.Lock()
        self._turns, self._departures = threading.Lock(), threading.Lock()
        self._last_turn = self._last_departure = float("-inf")  # when the last turn was taken, request left
        self._paused_until = 0.0
        self._decreased_at = float("-inf")
        self._successes: deque[float] = deque()  # times of the successes of the last second
        self._started: float | None = None
        self._mine = threading.local()  # this thread's turn (held) and its last departure (sent_at)
        #: How often Limio said too fast (429) or not now (503), and how often the rate was cut.
        self.limited = 0
        self.decreases = 0

    def _interval(self) -> float:
        rates = [rate for rate in (self.rate, self.ceiling) if rate is not None]
        return 1.0 / min(rates) if rates else 0.0

    def _await(self, queue: threading.Lock, last: str) -> None:
        """Wait until the batch is not paused and a request interval has passed since ``last`` (the last turn
        or departure), then record now as it. One thread waits at a time (the rest queue for ``queue``), and
        it reads the rate again as it waits: a cut holds for the very next request, not after those already
        promised a time at the old rate."""
        with queue:
            while True:
                with self._lock:
                    now = self._clock()
                    if self._started is None:
                        self._started = now
                    leave = max(getattr(self, last) + self._interval(), self._paused_until)
                    if now >= leave:
                        setattr(self, last, now)
                        return
                self._sleep(min(leave - now, 0.05))

    def wait_pause(self) -> None:
        """Return once the batch is not paused."""
        while (wait := self._paused_until - self._clock()) > 0:
            self._sleep(wait)

    def turn(self) -> None:
        """Wait for, and hold, this thread's next departure (the next request this thread sends uses it)."""
        self._await(self._turns, "_last_turn")
        self._mine.held = True

    def depart(self) -> None:
        """Right before a request leaves: use this thread's turn, or wait for one; then keep the spacing where
        requests leave too (a stall between a turn and the wire, a slow ledger write say, releases no burst)."""
        if getattr(self._mine, "held", False):
            self._mine.held = False
        else:
            self._await(self._turns, "_last_turn")
        self._await(self._departures, "_last_departure")
        self._mine.sent_at = self._clock()

    def succeeded(self) -> None:
        """A request was answered 2xx: the rate grows by :data:`INCREASE` a second in the second after a cut,
        twice that in the next, and so on (slowly near the rate Limio last refused, fast once it clearly takes
        more), but never past twice what is being accepted (a rate never put to the test does not grow)."""
        with self._lock:
            now = self._clock()
            self._successes.append(now)
            while self._successes and self._successes[0] < now - 1.0:
                self._successes.popleft()
            if self.rate is not None and self.rate < 2 * len(self._successes):
                doublings = int(min(MAX_DOUBLINGS, now - self._decreased_at))
                self.rate += INCREASE * 2**doublings / self.rate

    def backoff(self, status: int | None, seconds: float) -> None:
        """Before a retry: a 429 or a 503 cuts the rate (once for the requests that left before the last cut);
        a 429 then waits ``seconds`` for its own request only (the batch goes on, slower); any other backoff
        (a 503, a connection that failed) pauses the whole batch for ``seconds``."""
        if status in (429, 503):
            self._slow_down()
        if status == 429:
            self._sleep(seconds)
            return
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock() + seconds)
        self._sleep(seconds)

    def _slow_down(self) -> None:
        with self._lock:
            self.limited += 1
            now = self._clock()
            sent_at = getattr(self._mine, "sent_at", now)
            if sent_at < self._decreased_at + HOLD:  # it left before the last cut took hold: answered already
                return
            if self.rate is None:  # first time: a little under what Limio was accepting
                while self._successes and self._successes[0] < now - 1.0:
                    self._successes.popleft()
                elapsed = min(1.0, max(0.05, now - (self._started or now)))
                self.rate = len(self._successes) / elapsed
            self.rate = max(FLOOR, DECREASE * self.rate)
            self._decreased_at = now  # the growth starts slow again, near the rate refused
            self.decreases += 1

    def summary(self) -> dict[str, Any]:
        """What the batch learnt: how often Limio said too fast or not now, the cuts, the rate it ended at."""
        return {
            "limited": self.limited,
            "decreases": self.decreases,
            "requests_per_second": None if self.rate is None else round(self.rate, 1),
        }
