"""The batch's learnt request rate, on a clock of its own (the operator tests run it against the emulator's limit)."""

from __future__ import annotations

from typing import Any

import pytest

from limio_provider.hooks.rate import DECREASE, FLOOR, HOLD, INCREASE, AdaptiveRate


class Clock:
    """A clock that moves only when slept on."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


def rate_of(clock: Clock, ceiling: float | None = None) -> AdaptiveRate:
    return AdaptiveRate(ceiling, sleep=clock.sleep, clock=clock)


def accept(rate: AdaptiveRate, clock: Clock, count: int, every: float) -> None:
    """``count`` requests leave and are answered 2xx, ``every`` seconds apart."""
    for _ in range(count):
        rate.depart()
        rate.succeeded()
        clock.now += every


def test_unlimited_until_limio_says_too_fast_then_a_little_under_what_it_accepted(clock: Clock) -> None:
    rate = rate_of(clock)
    accept(rate, clock, 50, 0.01)  # 100 a second, never held back
    assert clock.slept == [] and rate.rate is None
    rate.depart()
    rate.backoff(429, 1.0)
    assert rate.rate == pytest.approx(DECREASE * 100, rel=0.05)
    assert clock.slept == [1.0] and rate.limited == rate.decreases == 1


def test_a_cut_holds_at_once_and_successes_grow_the_rate_by_a_few_a_second(clock: Clock) -> None:
    rate = rate_of(clock)
    accept(rate, clock, 100, 0.01)
    rate.depart()
    rate.backoff(429, 0.0)
    learnt = rate.rate
    assert learnt is not None
    started = clock.now
    accept(rate, clock, int(learnt), 0.0)  # as fast as the rate lets them leave: about a second's worth
    elapsed = clock.now - started
    assert elapsed == pytest.approx((int(learnt) - 1) / learnt, rel=0.1)  # spaced at the learnt rate
    assert rate.rate == pytest.approx(learnt + INCREASE * elapsed, rel=0.15)
    second = rate.rate
    clock.now += 1.0 - elapsed
    accept(rate, clock, int(second), 0.0)  # the second second after the cut: twice as fast
    assert rate.rate - second == pytest.approx(2 * INCREASE * (clock.now - started - 1.0), rel=0.2)


def test_429s_of_requests_sent_before_a_cut_took_hold_cut_once(clock: Clock) -> None:
    rate = rate_of(clock)
    rate.rate = 100.0
    rate.depart()
    rate.backoff(429, 0.0)
    rate.depart()  # leaves within HOLD of the cut: Limio's answer still counts what came before it
    rate.backoff(429, 0.0)
    assert (rate.limited, rate.decreases, rate.rate) == (2, 1, 100.0 * DECREASE)
    clock.now += HOLD
    rate.depart()
    rate.backoff(429, 0.0)
    assert rate.decreases == 2 and rate.rate == pytest.approx(100.0 * DECREASE**2)
    for _ in range(60):
        clock.now += 1
        rate.depart()
        rate.backoff(503, 0.0)
    assert rate.rate == FLOOR


def test_a_429_waits_for_itself_and_a_503_pauses_everyone(clock: Clock) -> None:
    rate = rate_of(clock)
    rate.depart()
    rate.backoff(429, 2.0)  # only this request waited
    clock.slept.clear()
    rate.wait_pause()
    assert clock.slept == []
    rate.depart()
    rate.backoff(503, 3.0)  # Limio not accepting: nobody sends until then
    clock.now -= 3.0  # as if another thread asks right away
    rate.wait_pause()
    assert sum(clock.slept) == pytest.approx(6.0)
    rate.backoff(None, 1.0)  # a connection that failed pauses too, without a cut
    assert rate.decreases == 2


def test_the_ceiling_spaces_requests_and_a_turn_is_used_by_the_next_departure(clock: Clock) -> None:
    rate = rate_of(clock, ceiling=10)
    times = []
    for _ in range(4):
        rate.turn()
        times.append(clock.now)
        rate.depart()  # uses the turn: no second wait for the same spacing
    assert [round(b - a, 3) for a, b in zip(times, times[1:], strict=False)] == [0.1, 0.1, 0.1]
    clock.now += 5  # a stall between a turn and the wire: the departure keeps the spacing all the same
    rate.turn()
    rate.depart()
    before = clock.now
    rate.depart()  # no turn held: it waits for one
    assert clock.now - before == pytest.approx(0.1, abs=0.01)


def test_a_failing_rate_never_turns_an_answer_limio_gave_into_an_error(limio_emulator: Any) -> None:
    """A bug in the rate's bookkeeping once made a 2xx raise after the order was created: an ``unknown``."""
    from limio_provider.hooks.limio import LimioHook
    from tests.helpers import new_order

    class Broken(AdaptiveRate):
        def succeeded(self) -> None:
            raise OverflowError("cannot convert float infinity to integer")

    hook = LimioHook(rate=Broken())
    result = hook.submit_order(new_order("RATE-BUG"))
    assert result.id and [order["id"] for order in limio_emulator.orders.values()] == [result.id]
