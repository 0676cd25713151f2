"""Emptying GPUs of a duty-cycle plan: the last step of ``improve`` (fewer GPUs, every constraint kept).

A plan routes each session by per-GPU rates, so a session's rate may be split over several GPUs. GPUs are taken
in increasing occupancy; every allocation on one ("the victim") is moved into the slack the other GPUs have at
their current duty cycles, split where no single GPU can take it whole, or the victim is left exactly as it was.
Receiving GPUs keep their duty cycle ``d``, so their other sessions keep their batches ``b_j = ceil(r_j*d)`` and
deadlines; moved rate is admitted only while the constraints of docs/architecture.md section 2 hold, and every
changed GPU is checked again at the end. Pure and deterministic; numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .plan import GpuPlan
from .squishy import Demand, ceil_batch, make_gpu

__all__ = ["empty_gpus"]

_REL = 1e-12  # float slack when comparing a latency or memory sum to its limit
_MAX_PASSES = 8
_PATIENCE = 48  # victims in a row that could not be emptied before a pass gives up (keeps it near-linear)


def empty_gpus(gpus: list[GpuPlan], demands: Sequence[Demand], memory_mb: float) -> list[GpuPlan]:
    """Run the emptying passes over the GPUs with room; whole GPUs of one session at occupancy 1 have none
    (its own batch cannot grow: ``x = b/d - r0 = 0``) and are passed through untouched."""
    full = [g for g in gpus if len(g.allocations) == 1 and g.occupancy >= 1 - 1e-9]
    shared = [g for g in gpus if not (len(g.allocations) == 1 and g.occupancy >= 1 - 1e-9)]
    state = _State(shared, demands, memory_mb)
    if not state.ok:
        return gpus
    for _ in range(_MAX_PASSES):
        if not state.empty_pass():
            break
    return full + state.result(shared)


class _State:
    """The working plan: per GPU its duty cycle ``d``, members {demand index: rate}, summed ``l(b)`` and memory.

    Per-GPU sums live in flat arrays so the room every GPU has for one session is computed in a few numpy ops.
    """

    def __init__(self, gpus: Sequence[GpuPlan], demands: Sequence[Demand], memory_mb: float):
        self.demands = demands
        self.memory_mb = memory_mb
        index = {dm.session.session: i for i, dm in enumerate(demands)}
        self.ok = len(index) == len(demands)
        n = len(gpus)
        self.duty = np.array([g.duty_cycle_ms for g in gpus], dtype=np.float64)
        self.load = np.zeros(n)
        self.mem = np.zeros(n)
        self.alive = np.ones(n, dtype=bool)
        self.touched = np.zeros(n, dtype=bool)
        # GPU -> its (load, memory, members, touched) before the current attempt, for undo.
        self.journal: dict[int, tuple[float, float, dict[int, float], bool]] | None = None
        self.members: list[dict[int, float]] = []
        # where[i]: GPU -> rate of demand i there (a session may be split over several GPUs).
        self.where: dict[int, dict[int, float]] = {}
        for g, gp in enumerate(gpus):
            m: dict[int, float] = {}
            for a in gp.allocations:
                i = index.get(a.session)
                if i is None or i in m:
                    self.ok = False
                    return
                m[i] = a.rate
                self.where.setdefault(i, {})[g] = a.rate
            self.members.append(m)
            self.load[g], self.mem[g] = self._sums(m, gp.duty_cycle_ms)

    # ------------------------------------------------------------------ per-GPU arithmetic
    def _batch(self, i: int, rate: float, duty: float) -> int:
        """``b = ceil(r*d)``: the requests of one duty cycle (0 when the session is absent)."""
        if rate <= 0:
            return 0
        # Same rounding as squishy.ceil_batch (robust to float noise), on scalars.
        return max(math.ceil(rate * duty / 1000.0 - 1e-7), 1)

    def _sums(self, members: dict[int, float], duty: float) -> tuple[float, float]:
        load = mem = 0.0
        for i, r in members.items():
            p = self.demands[i].profile
            b = min(self._batch(i, r, duty), p.max_batch)
            load += float(p.lat_ms[b])
            mem += float(p.mem_mb[b])
        return load, mem

    def _feasible(self, g: int) -> bool:
        """Every constraint of one GPU, recomputed from its members: ``sum l_i(b_i) <= d``, ``d + l_i(b_i) <= L'_i``,
        ``b_i = ceil(r_i*d) <= B_max``, memory."""
        d = float(self.duty[g])
        load = mem = 0.0
        for i, r in self.members[g].items():
            dm = self.demands[i]
            p = dm.profile
            b = self._batch(i, r, d)
            if b > p.max_batch or d + float(p.lat_ms[b]) > dm.budget_ms * (1 + 1e-9):
                return False
            load += float(p.lat_ms[b])
            mem += float(p.mem_mb[b])
        return load <= d * (1 + 1e-9) and mem <= self.memory_mb * (1 + 1e-9)

    def room(self, i: int, exclude: int) -> tuple[np.ndarray, np.ndarray]:
        """Per GPU, the largest rate of demand i it can take on top of what it has, at its own duty cycle.

        With d fixed, the other members' batches do not move; i's batch becomes ``b = ceil((r0 + x)*d)``, so
        the most it may reach is the largest b with
          ``l_i(b) <= d - load + l_i(b0)``   (sum of batch latencies stays within d),
          ``l_i(b) <= L'_i - d``             (a request waits one duty cycle, then runs),
          ``mem_i(b) <= M - mem + mem_i(b0)`` (memory),
        and b requests per duty cycle serve ``x = b/d - r0``. Returns (x per GPU, b0 per GPU).
        """
        dm = self.demands[i]
        p = dm.profile
        d = self.duty
        b0 = np.zeros(len(d), dtype=np.int64)
        r0 = np.zeros(len(d))
        for g, r in self.where.get(i, {}).items():
            b0[g] = min(self._batch(i, r, float(d[g])), p.max_batch)
            r0[g] = r
        lat, mem = p.lat_ms[1:], p.mem_mb[1:]
        slack = (d - self.load + p.lat_ms[b0]) * (1 + _REL)
        b = np.searchsorted(lat, slack, side="right")
        b = np.minimum(b, np.searchsorted(lat, (dm.budget_ms - d) * (1 + _REL), side="right"))
        b = np.minimum(b, np.searchsorted(mem, (self.memory_mb - self.mem + p.mem_mb[b0]) * (1 + _REL),
                                          side="right"))
        x = np.maximum(b * 1000.0 / d - r0, 0.0)
        x[~self.alive] = 0.0
        x[exclude] = 0.0
        return x, b0

    # ------------------------------------------------------------------ moves
    def _add(self, g: int, i: int, x: float) -> None:
        if self.journal is not None and g not in self.journal:
            self.journal[g] = (float(self.load[g]), float(self.mem[g]), dict(self.members[g]), bool(self.touched[g]))
        p = self.demands[i].profile
        d = float(self.duty[g])
        r0 = self.members[g].get(i, 0.0)
        b0 = min(self._batch(i, r0, d), p.max_batch)
        b1 = min(self._batch(i, r0 + x, d), p.max_batch)
        self.load[g] += float(p.lat_ms[b1] - p.lat_ms[b0])
        self.mem[g] += float(p.mem_mb[b1] - p.mem_mb[b0])
        self.members[g][i] = r0 + x
        self.where.setdefault(i, {})[g] = r0 + x
        self.touched[g] = True

    def _place(self, i: int, rate: float, victim: int) -> bool:
        """Move ``rate`` of demand i into the other GPUs: whole into the best fit when one GPU has room for it
        (the highest occupancy after the move), else the largest room first, split, until all is placed."""
        p = self.demands[i].profile
        x, b0 = self.room(i, victim)
        left = rate
        while left > rate * 1e-12:
            fits = x >= left * (1 - 1e-12)
            if fits.any():
                d = self.duty
                r0 = np.zeros(len(d))
                for g, r in self.where.get(i, {}).items():
                    r0[g] = r
                b1 = np.minimum(ceil_batch(r0 + left, d), p.max_batch)
                occ = np.where(fits, (self.load - p.lat_ms[b0] + p.lat_ms[b1]) / d, -np.inf)
                g = int(np.argmax(occ))
                self._add(g, i, left)  # left <= x[g] to 1e-12, far inside ceil_batch's 1e-7 rounding
                return True
            g = int(np.argmax(x))
            if x[g] <= 0:
                return False
            self._add(g, i, float(x[g]))
            left -= float(x[g])
            x[g] = 0.0
        return True

    def _try_empty(self, victim: int) -> bool:
        """Move every allocation of ``victim`` elsewhere, or undo everything and leave it as it was."""
        self.journal = {}
        where_saved = {i: dict(self.where.get(i, {})) for i in self.members[victim]}
        # Largest batch latency first: the hardest allocation to place fails the attempt early.
        d = float(self.duty[victim])
        order = sorted(self.members[victim].items(), key=lambda it: (
            -float(self.demands[it[0]].profile.lat_ms[min(self._batch(it[0], it[1], d),
                                                          self.demands[it[0]].profile.max_batch)]), it[0]))
        self.alive[victim] = False
        ok = all(self._place(i, r, victim) for i, r in order)
        journal, self.journal = self.journal, None
        if ok:
            for i in self.members[victim]:
                self.where[i].pop(victim, None)
            self.members[victim] = {}
            self.load[victim] = self.mem[victim] = 0.0
            return True
        self.alive[victim] = True
        for g, (load, mem, members, touched) in journal.items():
            self.load[g], self.mem[g], self.members[g], self.touched[g] = load, mem, members, touched
        # Only the victim's sessions were added anywhere, so their GPU maps are all that moved.
        self.where.update(where_saved)
        return False

    def empty_pass(self) -> bool:
        """One sweep over the GPUs in increasing occupancy; True when at least one was emptied."""
        live = np.nonzero(self.alive)[0]
        occ = self.load[live] / self.duty[live]
        emptied, misses = False, 0
        for g in live[np.lexsort((live, occ))].tolist():
            if misses >= _PATIENCE or len(live) < 2:
                break
            if self.members[g] and self._try_empty(g):
                emptied, misses = True, 0
            else:
                misses += 1
        return emptied

    def result(self, original: Sequence[GpuPlan]) -> list[GpuPlan]:
        out: list[GpuPlan] = []
        for g, gp in enumerate(original):
            if not self.alive[g]:
                continue
            if not self.touched[g]:
                out.append(gp)
                continue
            if not self._feasible(g):
                return list(original)  # never expected: the moves admit only feasible rates
            # Members keep their order: the GPU's own allocations first, then those moved in.
            out.append(make_gpu([(self.demands[i], r) for i, r in self.members[g].items()], float(self.duty[g]),
                                gp.id))
        return out
