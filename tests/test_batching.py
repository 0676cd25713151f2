"""The shared batching policies: early drop (scan and binary-search forms agree) and the baselines' decisions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus_lab.batching import (
    ALL_REASONS,
    DropReason,
    Window,
    clipper_next_limit,
    clipper_take,
    early_drop_sorted,
    early_drop_window,
    tf_serving_close,
    triton_dispatch,
)

LAT = np.array([0.0, 0.010, 0.015, 0.020, 0.025])  # l(b) = 5 ms + 5 ms * b, b = 1..4


def test_early_drop_drops_only_hopeless_heads():
    # now = 1.0; a batch of 2 takes 15 ms: the first request (deadline 1.005) cannot make it, the rest can.
    assert early_drop_window([1.005, 1.020, 1.030], 1.0, 2, LAT) == Window(drop=1, take=2)
    # Nothing hopeless: the oldest max_batch go, FIFO.
    assert early_drop_window([1.1, 1.2, 1.3], 1.0, 2, LAT) == Window(0, 2)
    # A shrinking batch rescues a request: alone it needs 10 ms, in a pair 15 ms.
    assert early_drop_window([1.012], 1.0, 2, LAT) == Window(0, 1)
    assert early_drop_window([1.012, 1.012], 1.0, 2, LAT) == Window(1, 1)  # in a pair both miss: drop one
    # Everything hopeless: all dropped, nothing runs; an empty queue forms nothing.
    assert early_drop_window([0.9, 0.95], 1.0, 4, LAT) == Window(2, 0)
    assert early_drop_window([], 1.0, 4, LAT) == Window(0, 0)
    # The callable form of l(b) and a consumed prefix (start) give the same answer.
    assert early_drop_window([0.0, 1.005, 1.020, 1.030], 1.0, 2, lambda b: float(LAT[b]), start=1) == Window(1, 2)


def test_drop_reasons_are_the_public_strings():
    assert (DropReason.DEADLINE, DropReason.OVERLOAD, DropReason.NO_ROUTE, DropReason.WORKER_LOST) == ALL_REASONS
    assert ALL_REASONS == ("deadline", "overload", "no_route", "worker_lost")


@settings(max_examples=300, deadline=None)
@given(gaps=st.lists(st.floats(0, 0.02), min_size=0, max_size=40), now=st.floats(0, 0.5),
       max_batch=st.integers(1, 4), start_frac=st.floats(0, 1), budget=st.floats(0.005, 0.1))
def test_sorted_form_equals_the_scan(gaps, now, max_batch, start_frac, budget):
    deadlines = np.cumsum(np.asarray(gaps, dtype=np.float64)) + budget
    start = int(start_frac * len(deadlines))
    assert early_drop_sorted(deadlines, start, len(deadlines), now, max_batch, LAT) == \
        early_drop_window(deadlines, now, max_batch, LAT, start=start)


def test_tf_serving_closes_on_size_or_timeout_regardless_of_gpu():
    arr = [0.0, 0.0005, 0.0015, 0.002, 0.0025, 0.0035]
    assert tf_serving_close(arr, 0, 4, 0.001) == (0.001, 2)  # timeout of the oldest closes it with 2
    assert tf_serving_close(arr, 0, 2, 0.010) == (0.0005, 2)  # full at the second arrival
    assert tf_serving_close(arr, 5, 4, 0.001) == (pytest.approx(0.0045), 1)  # the trace ends: timeout
    with pytest.raises(ValueError, match="start"):
        tf_serving_close(arr, 6, 4, 0.001)


def test_triton_waits_only_while_the_gpu_is_free():
    arr = [0.0, 0.0005, 0.0015, 0.002, 0.0025, 0.0035]
    # GPU free: wait for the oldest's max_queue_delay (1 ms), dispatch what is queued then.
    assert triton_dispatch(arr, 0, 0.0, 4, 0.001) == (0.001, 2)
    # GPU busy until 4 ms: four are queued by then, that is max batch: go at once.
    assert triton_dispatch(arr, 2, 0.004, 4, 0.001) == (0.004, 4)
    # GPU free and max batch fills before the delay expires: go when it fills.
    assert triton_dispatch(arr, 0, 0.0, 3, 0.010) == (0.0015, 3)


def test_clipper_takes_without_waiting_and_adapts_aimd():
    arr = [0.0, 0.0001, 0.0002, 0.0003]
    assert clipper_take(arr, 0, 0.0, 1.0) == (0.0, 1)
    assert clipper_take(arr, 1, 0.002, 2.7) == (0.002, 2)  # floor(limit) = 2 of the 3 queued
    assert clipper_next_limit(3.0, 0.010, 0.005, 0.050, max_batch=4) == 4.0
    assert clipper_next_limit(4.0, 0.010, 0.005, 0.050, max_batch=4) == 4.0  # capped at the max batch
    assert clipper_next_limit(10.0, 0.040, 0.020, 0.050, max_batch=32) == pytest.approx(9.0)
    assert clipper_next_limit(1.0, 0.040, 0.020, 0.050, max_batch=32) == 1.0  # floor 1
