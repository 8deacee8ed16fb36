"""Low-precision training: LUQ (4-bit forward and backward) and LNS-Madam against fp32.

    python benchmarks/lowprec.py                 # both tasks; digits 3 seeds, char-gpt2 1 seed
    python benchmarks/lowprec.py --quick         # a smoke run

Configurations: fp32 + Adam; LUQ 4/4 + Adam; LUQ with SMP=2; LUQ with the last 10% of steps in full
precision (FNT); Madam in fp32; LNS-Madam 8-bit (LNS weights, ``LNSMadam`` updates on the grid). Tasks: the
digits ResNet (test accuracy) and a tiny GPT-2 char-LM on ``stdlib_text`` (validation loss). Same seed, data
order and step count for every row. Prints a Markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import tasks  # noqa: E402

from effplug.optim import LNSMadam, Madam  # noqa: E402
from effplug.quant.lns import prepare_lns  # noqa: E402
from effplug.quant.luq import LUQConfig, prepare_luq, set_luq_enabled  # noqa: E402

CONFIGS = {
    "fp32 + Adam": dict(),
    "LUQ 4/4": dict(luq=LUQConfig()),
    "LUQ 4/4, SMP=2": dict(luq=LUQConfig(smp=2)),
    "LUQ 4/4 + FNT (last 10%)": dict(luq=LUQConfig(), fnt=0.1),
    "Madam fp32": dict(optimizer="madam"),
    "LNS-Madam 8-bit": dict(optimizer="lns-madam", lns=True),
}
TASKS = {"digits": tasks.digits_task, "char-gpt2": tasks.char_lm_task}


def run(task: str, name: str, seed: int, steps: int, device) -> dict:
    spec = CONFIGS[name]

    def prepare(model):
        if "luq" in spec:
            prepare_luq(model, spec["luq"])
        if spec.get("lns"):
            prepare_lns(model)
        return model

    model, opt, batches, loss_fn, evaluate, metric = TASKS[task](seed, device, prepare=prepare)
    if spec.get("optimizer") == "madam":
        opt = Madam(model.parameters(), lr=0.01)
    elif spec.get("optimizer") == "lns-madam":
        opt = LNSMadam(model.parameters(), lr=1 / 8, bits=8, gamma=8)
    switch_at = int(steps * (1 - spec["fnt"])) if "fnt" in spec else None
    model.train()
    for i, (x, y) in enumerate(batches(steps)):
        if switch_at is not None and i == switch_at:
            set_luq_enabled(model, False)
        opt.zero_grad(set_to_none=True)
        loss_fn(x, y).backward()
        opt.step()
    return {"task": task, "config": name, "seed": seed, "metric": metric, "value": evaluate()}


def table(rows: list) -> str:
    lines = ["| task | configuration | seeds | metric (mean, min-max) | vs fp32 + Adam |", "|---|---|---|---|---|"]
    for task in dict.fromkeys(r["task"] for r in rows):
        task_rows = [r for r in rows if r["task"] == task]
        base = statistics.mean(r["value"] for r in task_rows if r["config"] == "fp32 + Adam")
        for config in dict.fromkeys(r["config"] for r in task_rows):
            values = [r["value"] for r in task_rows if r["config"] == config]
            mean = statistics.mean(values)
            accuracy = task_rows[0]["metric"] == "accuracy"
            fmt = "{:.4f}" if accuracy else "{:.3f}"
            spread = f" ({fmt.format(min(values))}-{fmt.format(max(values))})" if len(values) > 1 else ""
            delta = f"{100 * (mean - base):+.2f} pt" if accuracy else f"{mean - base:+.3f}"
            lines.append(f"| {task} | {config} | {len(values)} | {task_rows[0]['metric']} {fmt.format(mean)}{spread} | {delta} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    tasks.add_grid_arguments(parser, TASKS, 400, "bench_out/lowprec.json", configs=CONFIGS)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    steps = tasks.grid_steps(args)
    configs = ["fp32 + Adam", *[c for c in args.configs if c != "fp32 + Adam"]]
    rows, start = [], time.perf_counter()
    for task in args.tasks:
        for seed in tasks.default_seeds(args, task):
            for name in configs:
                rows.append(run(task, name, seed, steps, device))
                print(f"[{time.perf_counter() - start:6.0f}s] {task} seed {seed} {name}: {rows[-1]['value']:.4f}",
                      file=sys.stderr, flush=True)
    print(table(rows))
    tasks.write_report(args.json, rows, steps, device)


if __name__ == "__main__":
    main()
