"""The docs' plots, drawn from benchmark JSON (never by hand): ``make plots`` or

    python benchmarks/plots.py                      # reads docs/data/*.json, writes docs/plots/*.png
    python benchmarks/plots.py --data bench_out     # from a fresh run's JSON instead

Each figure names the command and the machine that produced its data (the JSON's ``argv`` and ``environment``).
The planner figure is the model itself (``effplug plan``), computed here, and says so.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _load(folder: Path, name: str) -> dict:
    path = folder / f"{name}.json"
    if not path.exists():
        raise SystemExit(f"{path} is missing: run the benchmark that writes it (see docs/plots.md) and copy its "
                         f"JSON there, or pass --data bench_out")
    return json.loads(path.read_text())


def _source(report: dict) -> str:
    env = report.get("environment", {})
    argv = " ".join(Path(a).name if i == 0 else a for i, a in enumerate(report.get("argv", [])))
    machine = f"{env.get('cpu_count', '?')}-core {env.get('machine', '')} CPU, torch {env.get('packages', {}).get('torch', '?')}"
    gpus = env.get("cuda_devices") or []
    if gpus:
        machine = ", ".join(str(g) for g in gpus)
    return f"data: python benchmarks/{argv}\nmachine: {machine}"


def _save(fig, out: Path, name: str, source: str) -> Path:
    fig.text(0.01, 0.005, source, fontsize=6.5, color="0.35", ha="left", va="bottom")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    path = out / f"{name}.png"
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return path


def activation_memory(report: dict, out: Path) -> Path:
    rows = [r for r in report["rows"] if r["task"] == "digits"]
    base = [r for r in rows if r["config"] == "baseline"]
    fig, (mem, acc) = plt.subplots(1, 2, figsize=(9, 3.6))
    methods: dict[str, list] = {}
    for r in rows:
        match = re.fullmatch(r"(actnn|gact|mesa|division)-(\d)", r["config"])
        if match:
            methods.setdefault(match[1], []).append((int(match[2]), r))
    for method, points in sorted(methods.items()):
        points.sort()
        bits = [b for b, _ in points]
        mem.plot(bits, [r["step_saved_bytes"] / 2**20 for _, r in points], "o-", label=method)
        acc.plot(bits, [100 * r["value"] for _, r in points], "o-", label=method)
    if base:
        mem.axhline(base[0]["step_saved_bytes"] / 2**20, color="k", ls="--", lw=1, label="exact (fp32)")
        acc.axhline(100 * base[0]["value"], color="k", ls="--", lw=1, label="exact (fp32)")
    for axis, label in ((mem, "saved for backward, MB per step"), (acc, "test accuracy %")):
        axis.set_xscale("log", base=2)
        axis.set_xticks([1, 2, 4, 8], ["1", "2", "4", "8"])
        axis.set_xlabel("bits per saved element")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    mem.legend(fontsize=7)
    fig.suptitle("Compressed activations on the digits ResNet: memory and accuracy against bits", fontsize=10)
    return _save(fig, out, "activation_memory", _source(report))


def comm(report: dict, out: Path) -> Path:
    rows = report["rows"]
    fig, axis = plt.subplots(figsize=(6.5, 3.8))
    for task in dict.fromkeys(r["task"] for r in rows):
        for name in dict.fromkeys(r["compressor"] for r in rows if r["task"] == task):
            runs = [r for r in rows if r["task"] == task and r["compressor"] == name]
            sent = statistics.mean(r["bytes_per_step"] for r in runs)
            score = statistics.mean(r["score"] for r in runs) * (100 if runs[0]["metric"] == "accuracy" else 1)
            axis.scatter(sent, score, s=30)
            axis.annotate(name, (sent, score), fontsize=7, xytext=(4, 3), textcoords="offset points")
    axis.set_xscale("log")
    axis.set_xlabel("bytes one rank sends per step (log)")
    axis.set_ylabel("test accuracy %" if rows[0]["metric"] == "accuracy" else rows[0]["metric"])
    axis.grid(alpha=0.3)
    worlds = " and ".join(str(w) for w in sorted({r["world_size"] for r in rows}))
    fig.suptitle(f"Gradient compression: accuracy against bytes on the wire (digits, {worlds} gloo ranks)",
                 fontsize=10)
    return _save(fig, out, "comm_accuracy_vs_bytes", _source(report))


def pipeline(report: dict, out: Path) -> Path:
    rows = report["rows"]
    from effplug.parallel.schedules import analytic_bubble

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for axis, depth in zip(axes, sorted({r["depth"] for r in rows}), strict=False):
        for i, schedule in enumerate(dict.fromkeys(r["schedule"] for r in rows)):
            runs = sorted((r for r in rows if r["depth"] == depth and r["schedule"] == schedule),
                          key=lambda r: r["microbatches"])
            color = f"C{i}"
            axis.plot([r["microbatches"] for r in runs], [r["bubble"] for r in runs], "o", color=color,
                      label=f"{schedule} measured")
            grid = [m for m in range(2, max(r["microbatches"] for r in runs) + 1)
                    if schedule != "chimera" or m % 2 == 0]  # Chimera splits micro-batches over two pipelines
            times = report.get("forward_ms", 1.0), report.get("backward_ms", 2.0)
            axis.plot(grid, [analytic_bubble(schedule, depth, m, *times) for m in grid], "-", color=color, lw=1,
                      label=f"{schedule} analytic")
        axis.set_title(f"D = {depth} stages", fontsize=9)
        axis.set_xlabel("micro-batches per step")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("bubble fraction")
    axes[0].legend(fontsize=7)
    fig.suptitle("Pipeline bubble against micro-batches: measured (sleep stages, gloo) and analytic", fontsize=10)
    return _save(fig, out, "pipeline_bubble", _source(report))


def qat_grid(report: dict, out: Path) -> Path:
    rows = [r for r in report["rows"] if r.get("suite") == "grid" and r["task"] == "digits"]
    algorithms = [a for a in dict.fromkeys(r["algorithm"] for r in rows) if a != "fp32"]
    bits = sorted({r["bits"] for r in rows if r["algorithm"] != "fp32"}, reverse=True)
    grid = [[statistics.mean(100 * r["value"] for r in rows if r["algorithm"] == a and r["bits"] == b)
             if any(r["algorithm"] == a and r["bits"] == b for r in rows) else float("nan") for b in bits]
            for a in algorithms]
    fig, axis = plt.subplots(figsize=(5.2, 3.4))
    image = axis.imshow(grid, cmap="viridis", aspect="auto")
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            axis.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=8,
                      color="white" if value < (max(max(grid)) + min(min(grid))) / 2 else "black")
    axis.set_xticks(range(len(bits)), [f"W{b}A{b}" for b in bits])
    axis.set_yticks(range(len(algorithms)), algorithms)
    fp32 = [100 * r["value"] for r in rows if r["algorithm"] == "fp32"]
    title = "QAT on the digits ResNet: test accuracy %"
    if fp32:
        title += f" (fp32 {statistics.mean(fp32):.1f})"
    axis.set_title(title, fontsize=9)
    fig.colorbar(image, ax=axis, shrink=0.8)
    return _save(fig, out, "qat_grid", _source(report))


def planner(out: Path) -> Path:
    from effplug.parallel.planner import Link, Workload, parse_topology, rank_layouts

    work = Workload(7e9)
    specs = ["fattree", "fattree:2", "torus:8x8", "hammingmesh:2x2", "hammingmesh:4x4"]
    speeds = [25, 100, 400]
    fig, axis = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / len(speeds)
    for k, gbit in enumerate(speeds):
        steps = []
        for spec in specs:
            best = next(r for r in rank_layouts(work, parse_topology(spec, 64, Link.gbit(gbit))) if r.fits)
            steps.append(best.comm_s * 1e3)
        axis.bar([i + k * width for i in range(len(specs))], steps, width, label=f"{gbit} Gbit/s")
    axis.set_xticks([i + width for i in range(len(specs))], specs, fontsize=8)
    axis.set_ylabel("communication ms per step\n(fastest fitting layout)")
    axis.legend(fontsize=7)
    axis.grid(alpha=0.3, axis="y")
    fig.suptitle("effplug plan, 7B parameters on 64 GPUs: communication per topology (a model)", fontsize=10)
    return _save(fig, out, "planner_topologies", "data: the planner's model, effplug plan --params 7e9 --gpus 64 "
                                                 "--topology <each> --link <each> (no measurement)")


def pruning_pareto(report: dict, out: Path) -> Path:
    rows = [r for r in report["rows"] if r.get("suite") == "pruning"]
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.6 * len(tasks), 3.6), squeeze=False)
    for axis, task in zip(axes[0], tasks, strict=True):
        points = [r for r in rows if r["task"] == task]
        for bits in sorted({r["weight_bits"] for r in points}, reverse=True):
            line = sorted((r for r in points if r["weight_bits"] == bits), key=lambda r: r["model_bytes"])
            axis.plot([r["model_bytes"] / 1e3 for r in line], [r["value"] for r in line], "o-",
                      label="fp32" if bits == 32 else f"W{bits}A8")
            for r in line:
                axis.annotate(f"{r['measured_sparsity']:.0%}", (r["model_bytes"] / 1e3, r["value"]), fontsize=6,
                              xytext=(3, 3), textcoords="offset points")
        front, best = [], None  # the Pareto front: fewer bytes and a better metric
        better = (lambda a, b: a > b) if points[0]["metric"] == "accuracy" else (lambda a, b: a < b)
        for r in sorted(points, key=lambda r: r["model_bytes"]):
            if best is None or better(r["value"], best):
                front.append(r)
                best = r["value"]
        axis.plot([r["model_bytes"] / 1e3 for r in front], [r["value"] for r in front], "k--", lw=0.8,
                  label="Pareto front")
        axis.set_xscale("log")
        axis.set_xlabel("model bytes (KB, log)")
        axis.set_ylabel(points[0]["metric"])
        axis.set_title(f"{task}: pruning x QAT (labels: sparsity)", fontsize=9)
        axis.legend(fontsize=7)
    return _save(fig, out, "pruning_pareto", _source(report))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT / "docs" / "data"), help="folder of the benchmark JSON")
    parser.add_argument("--out", default=str(ROOT / "docs" / "plots"))
    args = parser.parse_args(argv)
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = [activation_memory(_load(data, "activation_memory"), out), comm(_load(data, "comm"), out),
               pipeline(_load(data, "pipeline"), out), qat_grid(_load(data, "qat"), out), planner(out),
               pruning_pareto(_load(data, "sparse"), out)]
    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
