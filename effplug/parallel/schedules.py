"""Pipeline schedules as per-worker action lists, and a simulator for their makespan and bubble fraction.

Framework-free: a schedule is ``{worker: [Action, ...]}`` in execution order. ``simulate`` runs it with
per-action compute times and the data dependencies of pipeline training and returns the timeline, so bubble
fractions, diagrams and conflict checks all come from the same lists a runtime executes.

* GPipe (Huang et al. 2019): all forwards, then all backwards, on every stage.
* 1F1B (PipeDream-flush, Narayanan et al. 2021): stage ``s`` runs ``D - s - 1`` warm-up forwards, then
  alternates one forward and one backward, then drains. Both have bubble (D-1)/(N+D-1).
* Chimera (Li & Hoefler, SC'21, Sec. 3.1): two replicas in opposite directions; stage ``s`` of the *down*
  pipeline on worker ``s`` and of the *up* pipeline on worker ``D-1-s``; each takes N/2 micro-batches
  scheduled 1F1B; the two per-worker timelines are merged by their start slot. Where both put an action in
  the same slot, the one further along its pipeline (higher stage index) goes first. At D = 4, N = 4 this is
  the order of the paper's Fig. 3 and of the authors' runtime (``chimera_gpt2/gpt2/main_with_runtime.py``),
  checked in the tests; for N > D each replica runs one 1F1B over its N/2 micro-batches instead of the
  paper's concatenated basic units (fewer bubbles in the simulator, see docs/pipeline.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

FORWARD, BACKWARD = "F", "B"


@dataclass(frozen=True)
class Action:
    kind: str  # "F" or "B"
    stage: int  # stage index within its pipeline
    microbatch: int
    pipe: str = "down"  # Chimera's replica; single pipelines are "down"

    def __str__(self) -> str:
        arrow = "" if self.pipe == "down" else "^"
        return f"{self.kind}{self.microbatch}{arrow}"


def _check(depth: int, microbatches: int) -> None:
    if not isinstance(depth, int) or depth < 2:
        raise ValueError(f"depth={depth!r}: a pipeline needs at least 2 stages")
    if not isinstance(microbatches, int) or microbatches < 1:
        raise ValueError(f"microbatches={microbatches!r}: use a positive int")


def gpipe(depth: int, microbatches: int) -> dict[int, list[Action]]:
    _check(depth, microbatches)
    return {s: [Action(FORWARD, s, m) for m in range(microbatches)] +
            [Action(BACKWARD, s, m) for m in range(microbatches)] for s in range(depth)}


def _one_f_one_b_stage(stage: int, depth: int, microbatches: list[int], pipe: str) -> list[Action]:
    warmup = min(depth - stage - 1, len(microbatches))
    order = [Action(FORWARD, stage, m, pipe) for m in microbatches[:warmup]]
    backward = 0
    for m in microbatches[warmup:]:
        order.append(Action(FORWARD, stage, m, pipe))
        order.append(Action(BACKWARD, stage, microbatches[backward], pipe))
        backward += 1
    order += [Action(BACKWARD, stage, m, pipe) for m in microbatches[backward:]]
    return order


def one_f_one_b(depth: int, microbatches: int) -> dict[int, list[Action]]:
    _check(depth, microbatches)
    return {s: _one_f_one_b_stage(s, depth, list(range(microbatches)), "down") for s in range(depth)}


def worker_of(action: Action, depth: int) -> int:
    """Chimera's placement: down stage s on worker s, up stage s on worker D-1-s."""
    return action.stage if action.pipe == "down" else depth - 1 - action.stage


def _chimera_slots(depth: int, microbatches: int) -> dict[int, list[tuple[float, int, Action]]]:
    """Each pipeline's own 1F1B timeline in unit slots (forward 1, backward 2), keyed by physical worker."""
    half = microbatches // 2
    slots: dict[int, list[tuple[float, int, Action]]] = {w: [] for w in range(depth)}
    for rank, (pipe, batch) in enumerate((("down", list(range(half))), ("up", list(range(half, microbatches))))):
        single = {s: _one_f_one_b_stage(s, depth, batch, pipe) for s in range(depth)}
        timeline = simulate({worker_of(actions[0], depth): actions for actions in single.values()}, 1.0, 2.0,
                            depth=depth)
        for event in timeline.events:
            slots[event.worker].append((event.start, rank, event.action))
    return slots


def chimera(depth: int, microbatches: int) -> dict[int, list[Action]]:
    """Chimera's merged per-worker order: D even, N even; each pipeline runs 1F1B over N/2 micro-batches."""
    _check(depth, microbatches)
    if depth % 2:
        raise ValueError(f"Chimera needs an even number of stages; got {depth}")
    if microbatches % 2:
        raise ValueError(f"microbatches={microbatches}: Chimera splits them evenly over two pipelines; use an even number")
    # same slot: the action further along its pipeline first (the authors' order; it also finishes
    # micro-batches sooner, as 1F1B does)
    return {w: [a for _, _, a in sorted(items, key=lambda item: (item[0], -item[2].stage))]
            for w, items in _chimera_slots(depth, microbatches).items()}


def merge_conflicts(depth: int, microbatches: int) -> int:
    """Slots where both pipelines' 1F1B timelines put an action on the same worker (the later stage goes first)."""
    total = 0
    for items in _chimera_slots(depth, microbatches).values():
        starts = [t for t, _, _ in items]
        total += len(starts) - len(set(starts))
    return total


SCHEDULES = {"gpipe": gpipe, "1f1b": one_f_one_b, "chimera": chimera}


@dataclass(frozen=True)
class Event:
    worker: int
    action: Action
    start: float
    end: float


@dataclass
class Timeline:
    events: list[Event] = field(default_factory=list)
    depth: int = 0

    @property
    def makespan(self) -> float:
        return max(e.end for e in self.events) - min(e.start for e in self.events)

    def busy(self, worker: int) -> float:
        return sum(e.end - e.start for e in self.events if e.worker == worker)

    @property
    def bubble_fraction(self) -> float:
        """1 - busy / (workers x makespan): the share of worker time spent idle."""
        workers = {e.worker for e in self.events}
        return 1.0 - sum(self.busy(w) for w in workers) / (len(workers) * self.makespan)

    def diagram(self, slot: float | None = None) -> str:
        """One text row per worker, one cell per time slot (``slot`` defaults to the shortest action)."""
        slot = slot or min(e.end - e.start for e in self.events)
        width = round(self.makespan / slot)
        rows = []
        for worker in sorted({e.worker for e in self.events}):
            cells = ["  . "] * width
            for e in (e for e in self.events if e.worker == worker):
                for k in range(round(e.start / slot), round(e.end / slot)):
                    cells[k] = f"{str(e.action):>4}"
            rows.append(f"worker {worker}: " + "".join(cells))
        return "\n".join(rows)


def simulate(order: dict[int, list[Action]], forward_time: float = 1.0, backward_time: float = 2.0,
             depth: int | None = None, latency: float = 0.0) -> Timeline:
    """Run per-worker action lists in order, each as soon as its worker is free and its inputs exist.

    Dependencies: F(s, m) needs F(s-1, m); B(s, m) needs F(s, m) and B(s+1, m) (the last stage's backward
    follows its own forward). ``latency`` is added to every cross-worker hand-off. Raises on a deadlock.
    """
    if not isinstance(order, dict) or not all(isinstance(a, Action) for actions in order.values() for a in actions):
        raise TypeError(f"simulate takes a schedule's per-worker action lists ({{worker: [Action, ...]}}), as "
                        f"gpipe(depth, microbatches) returns; got {type(order).__name__}")
    depth = depth or (max(a.stage for actions in order.values() for a in actions) + 1)
    done: dict[tuple, float] = {}
    where: dict[tuple, int] = {}
    position = {w: 0 for w in order}
    free_at = {w: 0.0 for w in order}
    timeline = Timeline(depth=depth)
    remaining = sum(len(a) for a in order.values())
    while remaining:
        progressed = False
        for worker, actions in order.items():
            if position[worker] >= len(actions):
                continue
            action = actions[position[worker]]
            key = (action.pipe, action.microbatch)
            if action.kind == FORWARD:
                needs = [(FORWARD, action.stage - 1)] if action.stage > 0 else []
            else:
                needs = [(FORWARD, action.stage)]
                if action.stage < depth - 1:
                    needs.append((BACKWARD, action.stage + 1))
            ready = 0.0
            for kind, stage in needs:
                dep = (kind, stage, *key)
                if dep not in done:
                    break
                hop = latency if where[dep] != worker else 0.0
                ready = max(ready, done[dep] + hop)
            else:
                start = max(ready, free_at[worker])
                end = start + (forward_time if action.kind == FORWARD else backward_time)
                done[(action.kind, action.stage, *key)] = end
                where[(action.kind, action.stage, *key)] = worker
                free_at[worker] = end
                timeline.events.append(Event(worker, action, start, end))
                position[worker] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            stuck = {w: str(order[w][position[w]]) for w in order if position[w] < len(order[w])}
            raise RuntimeError(f"schedule deadlocks: workers wait on {stuck}")
    return timeline


def analytic_bubble(schedule: str, depth: int, microbatches: int, forward_time: float = 1.0,
                    backward_time: float = 2.0) -> float:
    """The bubble fraction of ``schedule`` with zero-latency hand-offs (closed form for GPipe and 1F1B)."""
    if schedule in ("gpipe", "1f1b"):
        return (depth - 1) / (microbatches + depth - 1)
    return simulate(SCHEDULES[schedule](depth, microbatches), forward_time, backward_time, depth=depth).bubble_fraction
