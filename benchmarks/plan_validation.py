"""The planner against measured runs here: gloo DDP on 2 and 4 local processes, dense and with each compressor.

    python benchmarks/plan_validation.py            # worlds 2 and 4, an MLP of 4.2M parameters
    python benchmarks/plan_validation.py --quick

For each world size:
1. the link: ``all_reduce`` timed over 4 KiB-16 MiB and fitted to the ring model (``measure_link``);
2. the ranks train the same MLP three ways: alone (no DDP: the compute time of a step with this many processes
   sharing the CPU), with DDP through effplug's dense hook, and with each compressor. The hook's meter gives
   the bytes sent and the wall time spent in collectives.

The planner predicts (a) each run's time in collectives from its bytes, with the fitted link and the collective
the compressor uses, and (b) dense DDP's step as compute + predicted all-reduce (no overlap, as the planner
assumes). The tables give predicted, measured and the error. Writes JSON.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from effplug.launch import spawn_ranks  # noqa: E402
from effplug.parallel.planner.measure import measure_link  # noqa: E402
from effplug.profile import write_report  # noqa: E402

RUNS = {"compute only": None, "dense all-reduce": "dense", "top-k 1%": "topk", "natural": "natural",
        "cgx 4-bit": "cgx"}


def _model(width: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(*[m for _ in range(4) for m in (torch.nn.Linear(width, width), torch.nn.ReLU())])


def _rank(rank: int, world: int, width: int, steps: int) -> dict:
    from effplug.comm import GradientCompressor, make_compressor, register

    torch.set_num_threads(1)
    out = {}
    for name, kind in RUNS.items():
        model = _model(width)
        compressor = None
        if kind is not None:
            model = torch.nn.parallel.DistributedDataParallel(model)
            made = GradientCompressor() if kind == "dense" else make_compressor(kind, **(
                {"ratio": 0.01} if kind == "topk" else {"seed": 0}))
            compressor = register(model, made)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(rank)
        times = []
        for _ in range(steps):
            x = torch.randn(32, width, generator=gen)
            start = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            model(x).pow(2).mean().backward()
            opt.step()
            times.append(time.perf_counter() - start)
        warm = times[steps // 5:]
        row = {"step_s": statistics.median(warm)}
        if compressor is not None:
            meter = compressor.meter
            row.update(bytes_per_step=meter.bytes_per_step, collective_s=meter.collective_s / max(meter.steps, 1),
                       calls_per_step={op: n / max(meter.steps, 1) for op, n in meter.calls.items()})
        out[name] = row
    return out


# latency terms per call of each collective (ring algorithms), in alphas
LATENCY_ALPHAS = {"all_reduce": lambda w: 2 * (w - 1), "all_gather": lambda w: w - 1,
                  "all_to_all": lambda w: w - 1, "send": lambda w: 1}


def predicted_collective(world: int, bytes_per_step: float, calls_per_step: dict, link) -> float:
    """The planner's alpha-beta time for one step's collectives: the bytes one rank sends (the meter counts them
    with the same ring formulas the planner uses) over beta, plus each call's latency terms."""
    latency = sum(n * LATENCY_ALPHAS[op](world) for op, n in calls_per_step.items()) * link.alpha
    return latency + bytes_per_step / link.beta


def run(world: int, width: int, steps: int) -> list:
    link, seconds = measure_link(world)
    results = spawn_ranks(_rank, world, width, steps, timeout_s=1800)
    rows = []
    compute = max(r["compute only"]["step_s"] for r in results.values())
    for name in RUNS:
        if name == "compute only":
            continue
        measured_step = max(r[name]["step_s"] for r in results.values())
        measured_coll = statistics.mean(r[name]["collective_s"] for r in results.values())
        sent = results[0][name]["bytes_per_step"]
        coll = predicted_collective(world, sent, results[0][name]["calls_per_step"], link)
        row = {"world": world, "run": name, "bytes_per_step": sent, "collective_measured_s": measured_coll,
               "calls_per_step": results[0][name]["calls_per_step"],
               "collective_predicted_s": coll, "step_measured_s": measured_step, "compute_s": compute,
               "link_alpha_s": link.alpha, "link_beta_Bps": link.beta}
        if name == "dense all-reduce":
            row["step_predicted_s"] = compute + coll
        rows.append(row)
    return rows


def _err(pred: float, meas: float) -> str:
    return f"{100 * (pred / meas - 1):+.0f}%"


def tables(rows: list) -> str:
    lines = ["| W | fitted link | run | bytes/step | collective ms predicted | measured | error |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['world']} | {r['link_alpha_s'] * 1e6:.0f} us, {r['link_beta_Bps'] * 8 / 1e9:.2f} Gbit/s | "
                     f"{r['run']} | {r['bytes_per_step']:,.0f} | {r['collective_predicted_s'] * 1e3:.2f} | "
                     f"{r['collective_measured_s'] * 1e3:.2f} | "
                     f"{_err(r['collective_predicted_s'], r['collective_measured_s'])} |")
    lines += ["", "| W | compute ms (no DDP) | dense DDP step ms predicted | measured | error |", "|---|---|---|---|---|"]
    for r in rows:
        if "step_predicted_s" in r:
            lines.append(f"| {r['world']} | {r['compute_s'] * 1e3:.1f} | {r['step_predicted_s'] * 1e3:.1f} | "
                         f"{r['step_measured_s'] * 1e3:.1f} | {_err(r['step_predicted_s'], r['step_measured_s'])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--width", type=int, default=1024, help="MLP width: 4 layers of width² parameters")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--quick", action="store_true", help="world 2, width 256, 10 steps (a smoke run)")
    parser.add_argument("--json", default="bench_out/plan_validation.json")
    args = parser.parse_args()
    if args.quick:
        args.worlds, args.width, args.steps = [2], 256, 10
    rows = []
    for i, world in enumerate(args.worlds):
        rows += run(world, args.width, args.steps)
        print(f"[{i + 1}/{len(args.worlds)}] world {world} done", file=sys.stderr, flush=True)
    print(tables(rows))
    write_report(args.json, rows, width=args.width, steps=args.steps)


if __name__ == "__main__":
    main()
