"""Pipeline bubbles measured on real runtimes with controlled stage compute, next to their analytic values.

    python benchmarks/pipeline.py                    # GPipe, 1F1B, Chimera at D = 2, 4 and N = 4, 8
    python benchmarks/pipeline.py --forward-ms 20 --backward-ms 40   # shorter stages: overhead shows more

Every stage's compute is a sleep of ``--forward-ms`` in forward and ``--backward-ms`` in backward (an autograd
Function around a small Linear), so 4 processes on 2 cores measure the schedule, not CPU contention; the
activations and gradients still travel through torch.distributed.pipelining's P2P over gloo. GPipe and 1F1B
run torch's schedules (``PipelineRunner``), Chimera runs ``ChimeraRunner``. Per configuration: one warm-up
step, then the median of ``--repeats``:

    bubble = 1 - sum_r busy_r / (D * makespan)

with busy_r the time rank r spent inside stage compute and makespan from the earliest start to the latest end
(perf_counter is CLOCK_MONOTONIC, shared by processes on one host). The analytic value is
``effplug.parallel.schedules.simulate`` of the same action order with the same times and no communication;
GPipe/1F1B's equals (D-1)/(N+D-1). Also reported: throughput (samples/s) and each worker's peak number of
micro-batches whose activations are held (from the schedule's order), the activation-memory balance.
Prints a Markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import tasks  # noqa: E402

GRID = [(2, 4), (2, 8), (4, 4), (4, 8)]
SCHEDULE_NAMES = ("gpipe", "1f1b", "chimera")
BUSY: list = []


class _Sleep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, forward_s, backward_s):
        ctx.backward_s = backward_s
        start = time.perf_counter()
        time.sleep(forward_s)
        BUSY.append(time.perf_counter() - start)
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        start = time.perf_counter()
        time.sleep(ctx.backward_s)
        BUSY.append(time.perf_counter() - start)
        return grad, None, None


class SleepStage(torch.nn.Module):
    def __init__(self, width: int, forward_s: float, backward_s: float):
        super().__init__()
        self.linear = torch.nn.Linear(width, width)
        self.forward_s, self.backward_s = forward_s, backward_s

    def forward(self, x):
        return _Sleep.apply(self.linear(x), self.forward_s, self.backward_s)


def peak_in_flight(order) -> dict[int, int]:
    """Per worker: the most micro-batches forwarded but not yet backwarded at once (activations held)."""
    peaks = {}
    for worker, actions in order.items():
        held = peak = 0
        for a in actions:
            held += 1 if a.kind == "F" else -1
            peak = max(peak, held)
        peaks[worker] = peak
    return peaks


def rank_main(args, out: Path) -> None:
    import torch.distributed as dist

    from effplug.parallel.pipeline import PipelineRunner
    from effplug.parallel.pipeline.chimera import ChimeraRunner

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, depth = dist.get_rank(), dist.get_world_size()
    forward_s, backward_s = args.forward_ms / 1e3, args.backward_ms / 1e3
    rows = []

    def loss_fn(output, target):
        return (output - target).pow(2).mean()

    for micro in [n for d, n in GRID if d == depth]:
        x, y = torch.randn(micro * 4, args.width), torch.zeros(micro * 4, args.width)
        for schedule in SCHEDULE_NAMES:
            torch.manual_seed(0)
            if schedule == "chimera":
                runner = ChimeraRunner(SleepStage(args.width, forward_s, backward_s),
                                       SleepStage(args.width, forward_s, backward_s), micro, loss_fn)

                def step(runner=runner, x=x, y=y):
                    runner.step(x, y)
            else:
                runner = PipelineRunner(SleepStage(args.width, forward_s, backward_s), rank, depth,
                                        schedule=schedule, microbatches=micro, loss_fn=loss_fn)

                def step(runner=runner, x=x, y=y):
                    runner.step(x if runner.is_first else None, y if runner.is_last else None)
            samples = []
            for repeat in range(args.repeats + 1):
                BUSY.clear()
                dist.barrier()
                start = time.perf_counter()
                step()
                end = time.perf_counter()
                spans = [None] * depth
                dist.all_gather_object(spans, (start, end, sum(BUSY)))
                makespan = max(s[1] for s in spans) - min(s[0] for s in spans)
                if repeat:  # the first step also sets the stages up
                    samples.append((1 - sum(s[2] for s in spans) / (depth * makespan), makespan))
            bubble, makespan = sorted(samples)[len(samples) // 2]
            rows.append({"schedule": schedule, "depth": depth, "microbatches": micro, "bubble": bubble,
                         "makespan_s": makespan, "samples_per_s": x.shape[0] / makespan,
                         "bubbles": [b for b, _ in samples]})
    if rank == 0:
        (out / f"depth{depth}.json").write_text(json.dumps(rows))
    dist.barrier()
    dist.destroy_process_group()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--forward-ms", type=float, default=60.0)
    parser.add_argument("--backward-ms", type=float, default=60.0)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default="bench_out/pipeline.json")
    parser.add_argument("--rank-of", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rank_of:
        return rank_main(args, Path(args.rank_of))

    from effplug.launch import launch_ranks
    from effplug.parallel.schedules import SCHEDULES, simulate

    started = time.perf_counter()
    rows = []
    passthrough = ["--forward-ms", str(args.forward_ms), "--backward-ms", str(args.backward_ms),
                   "--width", str(args.width), "--repeats", str(args.repeats)]
    with tempfile.TemporaryDirectory() as tmp:
        for depth in sorted({d for d, _ in GRID}):
            launch_ranks([__file__, "--rank-of", tmp, *passthrough], world=depth)
            rows += json.loads((Path(tmp) / f"depth{depth}.json").read_text())
    print(f"stage compute: forward {args.forward_ms:g} ms, backward {args.backward_ms:g} ms (sleep); "
          f"median of {args.repeats} steps after one warm-up\n")
    print("| schedule | D | N | measured bubble | analytic bubble | Δ (points) | samples/s | peak micro-batches held per worker |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        order = SCHEDULES[row["schedule"]](row["depth"], row["microbatches"])
        analytic = simulate(order, args.forward_ms, args.backward_ms, depth=row["depth"]).bubble_fraction
        held = peak_in_flight(order)
        row.update(analytic=analytic, peak_in_flight=held)
        print(f"| {row['schedule']} | {row['depth']} | {row['microbatches']} | {row['bubble']:.3f} | {analytic:.3f} | "
              f"{100 * (row['bubble'] - analytic):+.1f} | {row['samples_per_s']:.0f} | "
              f"{' / '.join(str(held[w]) for w in sorted(held))} |")
    by = {(r["schedule"], r["depth"], r["microbatches"]): r for r in rows}
    if ("chimera", 4, 8) in by:
        ratio = by[("chimera", 4, 8)]["bubble"] / by[("1f1b", 4, 8)]["bubble"]
        print(f"\nD=4, N=8: Chimera's measured bubble is {ratio:.2f}x 1F1B's")
    print(f"{time.perf_counter() - started:.0f} s wall", file=sys.stderr)
    tasks.write_report(args.json, rows, args.repeats, "cpu", forward_ms=args.forward_ms, backward_ms=args.backward_ms)
    return None


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
