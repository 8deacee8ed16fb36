"""Compressed activations: saved-activation memory, step time and accuracy against the exact baseline.

    python benchmarks/activation_memory.py                   # both tasks, the default configs
    python benchmarks/activation_memory.py --quick           # a smoke run (few steps, one seed)
    python benchmarks/activation_memory.py --tasks digits --seeds 0 1 2 --configs baseline actnn-4

Tasks: the digits ResNet (test accuracy, mean over seeds) and a tiny GPT-2 character LM on ``stdlib_text``
(validation loss in nats/char). Every config trains from the same seed and data order as the baseline.
Columns: the in-scope ratio (bytes the compressed tensors would have taken / bytes held), the whole-step
saved-bytes ratio (baseline saved-for-backward bytes / this config's, loss tensors and all), peak CUDA memory
(on a GPU), the median step time as a ratio to the baseline of the same run, and the metric. Prints a Markdown
table and writes JSON (machine, versions, command line, rows).
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

from effplug import models  # noqa: E402
from effplug.compress import ActivationCompressor, CompressionConfig  # noqa: E402
from effplug.profile import StepTimer, saved_bytes  # noqa: E402

CONFIGS = {
    "baseline": None,
    "checkpoint": "checkpoint",
    "actnn-8": dict(method="actnn", bits=8),
    "actnn-4": dict(method="actnn", bits=4),
    "actnn-2": dict(method="actnn", bits=2),
    "gact-4": dict(method="gact", bits=4, recalibrate_every=100),
    "gact-2": dict(method="gact", bits=2, recalibrate_every=100),
    "gact-4-relative": dict(method="gact", bits=4, recalibrate_every=100, sensitivity="relative"),
    "gact-2-relative": dict(method="gact", bits=2, recalibrate_every=100, sensitivity="relative"),
    "mesa-8": dict(method="mesa", bits=8),
    "mesa-4": dict(method="mesa", bits=4),
    "comet-1e-2": dict(method="comet", error_bound=1e-2, recalibrate_every=100),
    "division-4": dict(method="division", bits=4),
    "division-2": dict(method="division", bits=2),
    "actnn-2+checkpoint": dict(method="actnn", bits=2, checkpoint=True),  # compressed checkpoint boundaries
    "actnn-4+checkpoint": dict(method="actnn", bits=4, checkpoint=True),
}
# the digits ResNet has no list of blocks to checkpoint
CONFIG_TASKS = {"actnn-2+checkpoint": ("char-gpt2",), "actnn-4+checkpoint": ("char-gpt2",)}


class CheckpointedResNet(models.DigitsResNet):
    def forward(self, x):
        from torch.utils.checkpoint import checkpoint

        x = checkpoint(lambda t: self.stage1(self.stem(t)), x, use_reentrant=False)
        x = checkpoint(lambda t: self.stage2(self.pool(t)), x, use_reentrant=False)
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def digits_task(seed: int, checkpointed: bool, device):
    return tasks.digits_task(seed, device, model_class=CheckpointedResNet if checkpointed else models.DigitsResNet)


def char_lm_task(seed: int, checkpointed: bool, device):
    return tasks.char_lm_task(seed, device, checkpointed=checkpointed)


TASKS = {"digits": digits_task, "char-gpt2": char_lm_task}


def run(task: str, config_name: str, seed: int, steps: int, device) -> dict:
    spec = CONFIGS[config_name]
    model, opt, batches, loss_fn, evaluate, metric = TASKS[task](seed, spec == "checkpoint", device)
    engine = None
    if isinstance(spec, dict):
        engine = ActivationCompressor(model, CompressionConfig(seed=seed, **spec)).attach()
    timer = StepTimer(warmup=5, device=device)
    probe_batch = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for x, y in batches(steps):
        probe_batch = probe_batch or (x, y)
        timer.start()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(x, y)
        if engine is not None:
            engine.calibrate(loss)
        loss.backward()
        opt.step()
        timer.stop()
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    value = evaluate()
    x, y = probe_batch
    row = {"task": task, "config": config_name, "seed": seed, "metric": metric, "value": value,
           "step_ms": timer.median_s * 1e3, "peak_bytes": peak, "in_scope_ratio": None}
    if engine is None:
        row["step_saved_bytes"] = saved_bytes(lambda: loss_fn(x, y), parameters=model).activation_bytes
    else:
        model.train()
        row["step_saved_bytes"] = engine.step_saved_bytes(lambda: loss_fn(x, y))[1]
        report = engine.last_report
        row["in_scope_ratio"] = report.ratio
        if config_name.startswith("gact"):
            row["gact_average_bits"] = engine.method.average_bits()
        engine.detach()
    return row


def summarize(rows: list) -> list:
    out = []
    for task in dict.fromkeys(r["task"] for r in rows):
        task_rows = [r for r in rows if r["task"] == task]
        base = [r for r in task_rows if r["config"] == "baseline"]
        base_bytes = statistics.mean(r["step_saved_bytes"] for r in base)
        base_ms = statistics.mean(r["step_ms"] for r in base)
        base_peak = base[0]["peak_bytes"]
        for config in dict.fromkeys(r["config"] for r in task_rows):
            rs = [r for r in task_rows if r["config"] == config]
            values = [r["value"] for r in rs]
            out.append({
                "task": task, "config": config, "seeds": len(rs), "metric": rs[0]["metric"],
                "value_mean": statistics.mean(values), "value_min": min(values), "value_max": max(values),
                "in_scope_ratio": rs[0]["in_scope_ratio"],
                "step_saved_ratio": base_bytes / statistics.mean(r["step_saved_bytes"] for r in rs),
                "peak_ratio": (rs[0]["peak_bytes"] / base_peak) if base_peak else None,
                "step_time_ratio": statistics.mean(r["step_ms"] for r in rs) / base_ms,
            })
    return out


def format_table(summary: list) -> str:
    lines = [
        "| task | config | seeds | in-scope ratio | step saved-bytes ratio | peak ratio | step-time ratio | metric (mean, min-max) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        scope = f"{s['in_scope_ratio']:.2f}x" if s["in_scope_ratio"] else "-"
        peak = f"{s['peak_ratio']:.2f}" if s["peak_ratio"] else "n/a (CPU)"
        fmt = "{:.4f}" if s["metric"] == "accuracy" else "{:.3f}"
        value = f"{s['metric']} {fmt.format(s['value_mean'])}"
        if s["seeds"] > 1:
            value += f" ({fmt.format(s['value_min'])}-{fmt.format(s['value_max'])})"
        lines.append(
            f"| {s['task']} | {s['config']} | {s['seeds']} | {scope} | {s['step_saved_ratio']:.2f}x | {peak} "
            f"| {s['step_time_ratio']:.2f} | {value} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    tasks.add_grid_arguments(parser, TASKS, 300, "bench_out/activation_memory.json", configs=CONFIGS)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    steps = tasks.grid_steps(args)
    configs = ["baseline", *[c for c in args.configs if c != "baseline"]]
    rows = []
    start = time.perf_counter()
    for task in args.tasks:
        seeds = tasks.default_seeds(args, task)
        for seed in seeds:
            for config in configs:
                if task not in CONFIG_TASKS.get(config, (task,)):
                    continue
                row = run(task, config, seed, steps, device)
                rows.append(row)
                print(f"[{time.perf_counter() - start:6.0f}s] {task} {config} seed {seed}: "
                      f"{row['metric']} {row['value']:.4f}, {row['step_ms']:.1f} ms/step", file=sys.stderr, flush=True)
    summary = summarize(rows)
    print(format_table(summary))
    tasks.write_report(args.json, rows, steps, device, summary=summary)


if __name__ == "__main__":
    main()
