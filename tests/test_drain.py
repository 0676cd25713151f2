"""Draining as a first-class state (controller/rpc.py ``ClusterIO.draining``, deploy.py ``Deployment.drain``,
autoscale.py): a worker drained before it is retired is left out of every plan and apply, a user's ``apply`` from
another thread during the drain included, until it is gone; its mark is cleared with an event when it leaves or
when its retirement fails; ``state()`` shows it per worker."""

from __future__ import annotations

import threading
import time

import pytest

from nexus_lab.controller.autoscale import mark_draining
from nexus_lab.controller.rpc import ClusterIO


class _Client:
    """Just enough of a distributed client for ``ClusterIO.workers``."""

    status = "running"
    scheduler = object()

    def __init__(self, workers: list[str]) -> None:
        self.names = workers

    def scheduler_info(self, n_workers: int = -1) -> dict:
        return {"workers": {w: {} for w in self.names}}


def test_draining_workers_are_not_usable_until_cleared():
    io = ClusterIO(_Client(["a", "b", "c"]))
    io.unresponsive = {"c"}
    io.drain(["a"])
    assert io.draining == frozenset({"a"}) and io.usable() == ["b"]
    assert io.undrain({"a", "b"}) == {"a"}  # only the ones that had the mark
    assert io.usable() == ["a", "b"] and io.draining == frozenset()


def test_state_rows_say_which_workers_drain():
    state = {"gpus": [{"worker": "b", "gpu": 0}, {"worker": "c", "gpu": 1}], "cluster": {}}
    mark_draining(state, {"a", "c"})
    assert [(r["worker"], r["draining"]) for r in state["gpus"]] == [("a", True), ("b", False), ("c", True)]
    assert state["gpus"][0]["gpu"] is None and state["gpus"][0]["sessions"] == []  # it runs nothing
    assert state["cluster"]["draining"] == ["a", "c"]


def test_an_apply_during_a_drain_never_places_sessions_on_the_drained_worker():
    pytest.importorskip("nexus_lab.runtime.device")
    import nexus_lab
    from nexus_lab.runtime.loadgen import run_load

    rates = {"v": 300.0, "s": 60.0}  # the fewest-GPUs plan needs 2 GPUs; fill=2 spreads it over all 3 workers
    with nexus_lab.start(gpus=3, epoch_s=3600.0, poll_s=0.5, auto=False, fill=2.0) as c:
        c.add_session("vgg16", slo_ms=200, rate=rates["v"], name="v")
        c.add_session("vgg_s", slo_ms=100, rate=rates["s"], name="s")
        c.apply()
        assert all(c.assignment.values()) and len(c.assignment) == 3
        c.autoscale(minimum=1, maximum=3, up_cooldown_s=0, down_cooldown_s=0, down_after_s=0, run=False)
        load: dict = {}
        loader = threading.Thread(target=lambda: load.update(run_load(c.frontend, rates, 6.0, seed=2, settle_s=3.0)))
        loader.start()
        time.sleep(1.0)
        step: dict = {}
        stepper = threading.Thread(target=lambda: step.update(c.autoscale_step()))  # drain 1 worker, retire it
        stepper.start()
        deadline = time.time() + 20
        while not c.io.draining and stepper.is_alive() and time.time() < deadline:
            time.sleep(0.01)
        (victim,) = c.io.draining
        rows = {r["worker"]: r for r in c.state()["gpus"]}
        assert rows[victim]["draining"] and not any(r["draining"] for w, r in rows.items() if w != victim)
        applied = 0
        while stepper.is_alive() and victim in c.io.draining:  # the user applies again and again meanwhile,
            c.tick()  # while the epoch loop polls (the drained worker answers: it is not unresponsive)
            c.apply()
            applied += 1
            assert not c.assignment.get(victim), "an apply during the drain placed sessions on the drained worker"
        stepper.join(30)
        loader.join(30)
        print(f"applies during the drain: {applied}")
        assert applied >= 1 and step["target"] == 2
        assert victim not in c.io.workers() and c.io.draining == frozenset()
        kinds = [e["event"] for e in c.events()]
        assert "draining" in kinds and "drained" in kinds and "drain_done" in kinds
        assert victim not in {r["worker"] for r in c.state()["gpus"]}
        for name, s in load["sessions"].items():
            lost = s["offered"] - s["ok"] - sum(s["dropped"].values()) - s["failed"]
            assert s["offered"] > 0 and lost == 0 and s["failed"] == 0, (name, s["dropped"], s["failed"])
        # A retirement that fails clears the mark (with an event) and the worker serves again.
        c.stop_autoscale()
        c.autoscale(minimum=1, maximum=2, down_cooldown_s=0, down_after_s=0, run=False)
        c._deploy.editor.set_rate("v", 30.0)
        retire = c.client.retire_workers

        def refuse(**kw):
            raise OSError("the scheduler refused")

        c.client.retire_workers = refuse
        try:
            with pytest.raises(OSError, match="refused"):
                c.autoscale_step()
        finally:
            c.client.retire_workers = retire
        failed = [e for e in c.events() if e["event"] == "drain_failed"]
        assert failed and "refused" in failed[-1]["error"] and c.io.draining == frozenset()
        (kept,) = failed[-1]["workers"]
        assert kept in c.io.usable() and len(c.io.usable()) == 2  # it serves again
        assert c.tick() is not None  # and the loop re-plans onto it
