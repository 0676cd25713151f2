"""The controller's public methods with bad arguments: only the documented errors (a ``ValueError`` such as
``WorkloadError`` naming the argument, ``Dropped``, ``RequestFailed``), never a ``TypeError`` or ``AttributeError``
from inside, and no call slower than 10 s; after the cluster is lost, one clear ``ClusterLost``."""

from __future__ import annotations

import contextlib
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nexus_lab.controller import ClusterLost
from nexus_lab.runtime.results import Dropped, RequestFailed
from nexus_lab.workload import WorkloadError

pytest.importorskip("nexus_lab.runtime.device")

SIM = "simulated:titan-x-pascal"
DOCUMENTED = (ValueError, ClusterLost, Dropped, RequestFailed)

#: Method -> (required positional arguments, most positional arguments).
ARITY = {"infer": (1, 3), "submit": (1, 2), "query": (2, 3), "stats": (0, 2), "set_slo": (2, 2), "set_rate": (2, 2),
         "add_session": (2, 4), "add_query": (3, 4), "pin": (2, 2), "unpin": (1, 1), "remove": (1, 1),
         "apply_plan": (1, 1), "apply": (0, 1), "set_batch_floor": (1, 1), "collect": (0, 1), "close": (1, 1),
         "on_plan": (1, 1)}

junk = st.one_of(
    st.none(), st.booleans(), st.integers(-10**13, 10**13), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4), st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(),
                                                                             max_size=1),
    st.sampled_from(["5", -1, 0, 1e12, float("nan"), "small", "vgg_s", 50, 20.0, [{"name": "d", "model": 3}],
                     {"name": "x"}, b"\x00", object()]),
)


@pytest.fixture(scope="module")
def ctl():
    import nexus_lab

    c = nexus_lab.start(gpus=2, device=SIM, epoch_s=3600.0, poll_s=0.5, auto=False, fill=1.0)
    c.add_session("vgg_s", 50, rate=20, name="small")
    c.apply()
    try:
        yield c
    finally:
        c.close()


def test_named_bad_arguments(ctl):
    """The calls the issue names: each refused with the argument named."""
    cases = [(lambda: ctl.infer(["x"]), r"infer\.session"), (lambda: ctl.infer("small", None, timeout_s="5"),
                                                              r"infer\.timeout_s"),
             (lambda: ctl.infer("small", None, timeout_s=-1), r"infer\.timeout_s"),
             (lambda: ctl.stats(window_s="x"), r"stats\.window_s"), (lambda: ctl.apply_plan("x"), r"apply_plan\.plan"),
             (lambda: ctl.set_batch_floor("yes"), r"set_batch_floor\.on"), (lambda: ctl.pin("small", 1.5), r"pin\.gpu"),
             (lambda: ctl.collect(["tcp://nowhere:1"]), r"collect\.workers\[0\]"),
             (lambda: ctl.add_session("vgg_s", 50, rate=1e12), r"add_session\.rate")]
    for call, field in cases:
        with pytest.raises(WorkloadError, match=field):
            call()


@settings(max_examples=150, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(sorted(ARITY)), args=st.lists(junk, max_size=4), data=st.data())
def test_bad_arguments_raise_only_documented_errors(ctl, method, args, data):
    low, high = ARITY[method]
    args = (args + [data.draw(junk) for _ in range(low)])[:max(low, min(len(args), high))]
    if method == "close":  # a bad timeout only: a good one would close the shared controller
        args = [data.draw(st.one_of(st.just(-1), st.just("5"), st.just(float("nan")), st.none(), st.just([1])))]
    t0 = time.time()
    with contextlib.suppress(*DOCUMENTED):
        getattr(ctl, method)(*args)
    took = time.time() - t0
    assert took < 10.0, (method, args, took)


def test_calls_after_the_cluster_is_lost_raise_cluster_lost():
    import nexus_lab

    c = nexus_lab.start(gpus=1, device=SIM, epoch_s=3600.0, poll_s=0.5)
    try:
        name = c.add_session("vgg_s", 50, rate=10, name="gone")
        c.apply()
        c._cluster.close()  # the scheduler (and its workers) go away
        time.sleep(0.5)
        calls = [c.state, c.apply, c.plan, c.workers, c.tick, c.collect, lambda: c.stats(),
                 lambda: c.add_session("vgg_s", 60, rate=1), lambda: c.set_rate(name, 5), lambda: c.infer(name),
                 lambda: c.set_batch_floor(None), lambda: c.pin(name, 0)]
        for call in calls:
            t0 = time.time()
            with pytest.raises(ClusterLost, match="scheduler"):
                call()
            assert time.time() - t0 < 10.0
    finally:
        c.close()
    assert c.closed
