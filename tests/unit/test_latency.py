"""Latency figures: each timed run of a fast call lasts long enough to time, and a
difference inside the machine's noise says so (a tiny TFLite model showed 1.47x and 4.96x
"speed-ups" of weight pruning, which changes nothing a dense kernel computes)."""

from __future__ import annotations

import time

from pruning.v1 import pruning_pb2 as pb
from pruning_client.results import speed_up
from pruning_worker import measure


def _busy(seconds: float):
    def run() -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass

    return run


def test_fast_calls_are_timed_in_runs_long_enough_to_time():
    calls = [0, 0]

    def a() -> None:
        calls[0] += 1

    def b() -> None:
        calls[1] += 1

    timed = measure.paired_median_ms(a, b, repeats=10)
    assert timed.calls_per_sample >= 100  # a call of well under a microsecond
    assert calls[0] == calls[1] >= 10 * timed.calls_per_sample
    assert 0 < timed.a_ms < 0.01 and 0 < timed.b_ms < 0.01


def test_the_same_work_is_within_noise_and_twice_the_work_is_not():
    same = measure.paired_median_ms(_busy(0.0005), _busy(0.0005), repeats=15)
    assert same.within_noise, same
    slower = measure.paired_median_ms(_busy(0.002), _busy(0.0005), repeats=15)
    assert not slower.within_noise, slower
    assert slower.a_ms / slower.b_ms > 1.8, slower  # 4x of work; a loaded machine preempts both
    few = measure.paired_median_ms(_busy(0.002), _busy(0.0005), repeats=3)
    assert few.within_noise  # three runs cannot tell a spread


def test_a_speed_up_within_noise_is_shown_as_such():
    assert speed_up(pb.Latency(before_ms=0.3, after_ms=0.2)) == "1.50x"
    assert speed_up(pb.Latency(before_ms=0.3, after_ms=0.2, within_noise=True)) == "1.50x, within noise"
    assert speed_up(pb.Latency(before_ms=0.3)) == ""
