"""Large-batch training on the digits ResNet: does LARS (LAMB) close the gap that a 16x batch opens for SGD
(AdamW)?

    python benchmarks/large_batch.py                  # 3 seeds
    python benchmarks/large_batch.py --quick          # 1 seed, a quarter of the samples

Every run sees the same number of samples (``--samples``, in batches of 32 drawn from one seeded stream). The
large-batch runs accumulate 16 micro-batches of 32 into one step of 512, so they take 16x fewer steps. Their
learning rates come from ``effplug.optim.scale_for_batch``: linear for SGD and LARS, square root for AdamW and
LAMB, with the small-batch warm-up kept constant in samples. Prints a Markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import tasks  # noqa: E402

from effplug.optim import LAMB, LARS, exclude_bias_and_norm, scale_for_batch, warmup_schedule  # noqa: E402

MICRO = 32
BASE_WARMUP = 40  # steps of 32 at the base recipe
# name -> (builder(model, lr), base lr at batch 32, scaling rule)
BASELINE = {"SGD": "SGD", "LARS": "SGD", "AdamW": "AdamW", "LAMB": "AdamW"}  # the gap is to this at batch 32
OPTIMIZERS = {
    "SGD": (lambda m, lr: torch.optim.SGD(exclude_bias_and_norm(m, 5e-4), lr=lr, momentum=0.9), 0.05, "linear"),
    "LARS": (lambda m, lr: LARS(exclude_bias_and_norm(m, 5e-4), lr=lr, momentum=0.9, weight_decay=5e-4,
                                trust_coefficient=0.02), 0.05, "linear"),
    "AdamW": (lambda m, lr: torch.optim.AdamW(exclude_bias_and_norm(m, 0.01), lr=lr), 3e-3, "sqrt"),
    "LAMB": (lambda m, lr: LAMB(exclude_bias_and_norm(m, 0.01), lr=lr, weight_decay=0.01), 3e-3, "sqrt"),
}


def run(name: str, accumulate: int, seed: int, samples: int) -> dict:
    model, _, batches, _, evaluate, _ = tasks.digits_task(seed, "cpu")
    build, base_lr, rule = OPTIMIZERS[name]
    scaling = scale_for_batch(base_lr, MICRO, MICRO * accumulate, rule, base_warmup_steps=BASE_WARMUP)
    steps = samples // (MICRO * accumulate)
    for p in model.parameters():  # the task's Adam is replaced; drop any state it could hold
        p.grad = None
    opt = build(model, scaling.lr)
    sched = warmup_schedule(opt, scaling.warmup_steps, steps)
    model.train()
    started = time.perf_counter()
    stream = batches(steps * accumulate, MICRO)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        for _ in range(accumulate):
            x, y = next(stream)
            (F.cross_entropy(model(x), y) / accumulate).backward()
        opt.step()
        sched.step()
    return {"optimizer": name, "batch": MICRO * accumulate, "seed": seed, "lr": scaling.lr,
            "warmup_steps": scaling.warmup_steps, "steps": steps, "accuracy": evaluate(),
            "wall_s": time.perf_counter() - started}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--samples", type=int, default=None, help="training samples per run (default 16384)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default="bench_out/large_batch.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    samples = args.samples or (4096 if args.quick else 16384)
    rows = []
    for seed in seeds:
        for name in OPTIMIZERS:
            for accumulate in (1, 16):
                rows.append(run(name, accumulate, seed, samples))
                r = rows[-1]
                print(f"  {name:5s} batch {r['batch']:3d} seed {seed}: {100 * r['accuracy']:.2f}% "
                      f"(lr {r['lr']:.3g}, {r['steps']} steps, {r['wall_s']:.1f} s)", file=sys.stderr, flush=True)
    table = []
    print("| optimizer | batch | lr (scaled) | warm-up steps | steps | test accuracy % (mean [min, max]) | "
          "gap to SGD (AdamW) at batch 32 |")
    print("|---|---|---|---|---|---|---|")
    for name in OPTIMIZERS:
        small = statistics.mean(r["accuracy"] for r in rows if r["optimizer"] == BASELINE[name] and r["batch"] == MICRO)
        for batch in (MICRO, 16 * MICRO):
            runs = [r for r in rows if r["optimizer"] == name and r["batch"] == batch]
            acc = [100 * r["accuracy"] for r in runs]
            entry = {"optimizer": name, "batch": batch, "lr": runs[0]["lr"], "accuracy_mean": statistics.mean(acc),
                     "accuracy_min": min(acc), "accuracy_max": max(acc), "gap_pt": statistics.mean(acc) - 100 * small}
            table.append(entry)
            print(f"| {name} | {batch} | {runs[0]['lr']:.3g} | {runs[0]['warmup_steps']} | {runs[0]['steps']} | "
                  f"{entry['accuracy_mean']:.2f} [{entry['accuracy_min']:.2f}, {entry['accuracy_max']:.2f}] | "
                  f"{entry['gap_pt']:+.2f} pt |")
    tasks.write_report(args.json, rows, samples, "cpu", seeds=seeds, table=table, micro_batch=MICRO)


if __name__ == "__main__":
    main()
