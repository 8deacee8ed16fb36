"""Quantization-aware training, MQBench-style: algorithm x bits x backend preset, once-QAT, binarization.

    python benchmarks/qat.py                                  # every suite, default seeds
    python benchmarks/qat.py --quick                          # a smoke run (few steps, one seed)
    python benchmarks/qat.py --suite grid --tasks digits --seeds 0 1 2 --bits 4 2 --backends generic

Suites:
- ``grid``: fp32 and W=A={8,4,3,2}-bit QAT with minmax, OCTAV (MAD weights / STE activations), LSQ, and
  PACT (PACT activations, DoReFa weights, as in the PACT paper) under each backend preset; first and last
  layers at 8 bits. Tasks: the digits ResNet (test accuracy) and a tiny GPT-2 char-LM on ``stdlib_text``
  (validation loss, nats/char). Every run uses the same seed, data order and step count as fp32.
- ``once``: one once-QAT model (``bit_widths=[2, 3, 4, 8]``, 8-bit activations) evaluated at every width,
  against a model trained with LSQ for each width alone (digits).
- ``auto``: per-layer bits (``QATConfig(bits="auto")``, HAWQ trace x MSE, exact allocation) against a uniform
  width at the same average weight bits. Both fine-tune the same float model (trained ``--steps`` first; HAWQ
  searches a trained model) for ``--steps`` with OCTAV weights and 8-bit activations, first and last layers at
  8 bits (counted in the average). Auto runs at uniform 3-bit's average, and midway between uniform 2 and 3 (a nominal 2.5).
- ``binary``: a float hardtanh ResNet trained for ``--steps``, then binarized (1-bit weights and
  activations, first/last layers in float) and fine-tuned as long: DIR-Net, DIR-Net without RBD, and the
  plain sign+STE BNN; the float model trained for the same total steps is the reference (digits).
Prints Markdown tables and writes JSON (machine, versions, command line, every run).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import tasks  # noqa: E402

from effplug.quant import QATConfig, binary, multi_bit_loss, quantize_model, set_bits  # noqa: E402

ALGORITHMS = {
    "minmax": dict(weight_estimator="minmax", act_estimator="minmax"),
    "octav": dict(weight_estimator="octav", act_estimator="octav"),
    "lsq": dict(weight_estimator="lsq", act_estimator="lsq"),
    "pact": dict(weight_estimator="dorefa", act_estimator="pact"),
}
TASKS = {"digits": tasks.digits_task, "char-gpt2": tasks.char_lm_task}


def train(task_parts, steps: int, loss_override=None) -> float:
    model, opt, batches, loss_fn, evaluate, _ = task_parts
    model.train()
    for x, y in batches(steps):
        opt.zero_grad(set_to_none=True)
        loss = loss_override(x, y) if loss_override else loss_fn(x, y)
        loss.backward()
        opt.step()
    return evaluate()


def run_grid(task: str, seed: int, steps: int, algorithm: str | None, bits: int | None, backend: str | None,
             device) -> dict:
    prepare = None
    if algorithm is not None:
        config = QATConfig(weight_bits=bits, act_bits=bits, backend=backend, **ALGORITHMS[algorithm])
        prepare = lambda model: quantize_model(model, config)  # noqa: E731
    parts = TASKS[task](seed, device, prepare=prepare)
    return {"suite": "grid", "task": task, "seed": seed, "algorithm": algorithm or "fp32", "bits": bits or 32,
            "backend": backend or "-", "metric": parts[5], "value": train(parts, steps)}


def run_once(seed: int, steps: int, widths: list, device) -> list:
    rows = []
    config = QATConfig(bit_widths=widths, act_bits=8)
    parts = tasks.digits_task(seed, device, prepare=lambda m: quantize_model(m, config))
    model, loss_fn = parts[0], parts[3]
    train(parts, steps, loss_override=lambda x, y: multi_bit_loss(model, lambda: loss_fn(x, y))[0])
    for b in widths:
        set_bits(model, b)
        rows.append({"suite": "once", "seed": seed, "bits": b, "model": "once-QAT", "value": parts[4]()})
    for b in widths:
        alone = QATConfig(weight_bits=b, act_bits=8, weight_estimator="lsq")
        value = train(tasks.digits_task(seed, device, prepare=lambda m, c=alone: quantize_model(m, c)), steps)
        rows.append({"suite": "once", "seed": seed, "bits": b, "model": "dedicated LSQ", "value": value})
    return rows


def _average_weight_bits(model) -> float:
    from effplug.quant import quantized_layers
    from effplug.quant.convert import float_weight

    layers = quantized_layers(model).values()
    total = sum(float_weight(m).numel() for m in layers)
    return sum(m.weight_quant.bits * float_weight(m).numel() for m in layers) / total


def run_auto(task: str, seed: int, steps: int, device) -> list:
    fp = TASKS[task](seed, device)
    train(fp, steps)
    pretrained = copy.deepcopy(fp[0].state_dict())
    rows = [{"suite": "auto", "task": task, "seed": seed, "model": "float (same total steps)", "metric": fp[5],
             "avg_bits": 32.0, "value": train(fp, steps)}]
    uniform_avg = {}
    for label, settings in (("uniform 3", dict(weight_bits=3)), ("auto @ uniform-3 average", "3"),
                            ("uniform 2", dict(weight_bits=2)), ("auto @ midway between uniform 2 and 3", "2.5")):
        parts = TASKS[task](seed, device)
        model, _, batches, loss_fn = parts[:4]
        model.load_state_dict(pretrained)
        if settings == "3":
            settings = dict(bits="auto", budget_bits=uniform_avg["uniform 3"])
        elif settings == "2.5":  # first/last stay at 8, so the nominal 2.5 lies below char-gpt2's uniform 2
            settings = dict(bits="auto", budget_bits=(uniform_avg["uniform 2"] + uniform_avg["uniform 3"]) / 2)
        calibration = list(batches(2))
        quantize_model(model, QATConfig(act_bits=8, **settings),
                       sensitivity_losses=[lambda x=x, y=y, f=loss_fn: f(x, y) for x, y in calibration])
        avg = _average_weight_bits(model)
        uniform_avg[label] = avg
        rows.append({"suite": "auto", "task": task, "seed": seed, "model": label, "metric": parts[5],
                     "avg_bits": avg, "value": train(parts, steps),
                     "bits": getattr(getattr(model, "_effplug_bit_search", None), "bits", None)})
    return rows


def auto_table(rows: list) -> str:
    lines = ["| task | model | avg weight bits | seeds | metric (mean, min-max) |", "|---|---|---|---|---|"]
    for task in dict.fromkeys(r["task"] for r in rows):
        for model in dict.fromkeys(r["model"] for r in rows if r["task"] == task):
            runs = [r for r in rows if r["task"] == task and r["model"] == model]
            mean, lo, hi = _mean([r["value"] for r in runs])
            bits = statistics.mean(r["avg_bits"] for r in runs)
            lines.append(f"| {task} | {model} | {bits:.3f} | {len(runs)} | {runs[0]['metric']} {mean:.4f} "
                         f"({lo:.4f}-{hi:.4f}) |")
    return "\n".join(lines)


def run_binary(seed: int, steps: int, device) -> list:
    rows = []
    fp = tasks.digits_task(seed, device, activation="hardtanh")
    train(fp, steps)
    pretrained = copy.deepcopy(fp[0].state_dict())
    rows.append({"suite": "binary", "seed": seed, "model": "float (same total steps)", "value": train(fp, steps)})
    for name, settings in (("DIR-Net (IMB + DTE + RBD)", dict(method="dirnet")),
                           ("DIR-Net without RBD", dict(method="dirnet", distill_weight=0.0)),
                           ("sign + STE BNN", dict(method="sign_ste"))):
        engines = []

        def prepare(model, settings=settings, engines=engines):
            model.load_state_dict(pretrained)
            engines.append(binary.Binarizer(model, binary.BinarizationConfig(**settings)))
            return model

        parts = tasks.digits_task(seed, device, prepare=prepare, activation="hardtanh")
        model, opt, batches, loss_fn, evaluate, _ = parts
        model.train()
        for i, (x, y) in enumerate(batches(steps)):
            engines[0].set_progress(i / steps)
            opt.zero_grad(set_to_none=True)
            loss_fn(x, y).backward()
            opt.step()
        rows.append({"suite": "binary", "seed": seed, "model": name, "value": evaluate()})
    return rows


def _mean(values):
    return statistics.mean(values), min(values), max(values)


def grid_table(rows: list) -> str:
    lines = ["| task | backend | algorithm | W/A bits | seeds | metric (mean, min-max) | vs fp32 |", "|---|---|---|---|---|---|---|"]
    for task in dict.fromkeys(r["task"] for r in rows):
        task_rows = [r for r in rows if r["task"] == task]
        base = statistics.mean(r["value"] for r in task_rows if r["algorithm"] == "fp32")
        keys = dict.fromkeys((r["backend"], r["algorithm"], r["bits"]) for r in task_rows)
        for backend, algorithm, bits in keys:
            values = [r["value"] for r in task_rows if (r["backend"], r["algorithm"], r["bits"]) == (backend, algorithm, bits)]
            mean, lo, hi = _mean(values)
            accuracy = task_rows[0]["metric"] == "accuracy"
            fmt = "{:.4f}" if accuracy else "{:.3f}"
            spread = f" ({fmt.format(lo)}-{fmt.format(hi)})" if len(values) > 1 else ""
            delta = f"{100 * (mean - base):+.2f} pt" if accuracy else f"{mean - base:+.3f}"
            lines.append(f"| {task} | {backend} | {algorithm} | {bits if bits < 32 else 'fp32'} | {len(values)} | "
                         f"{task_rows[0]['metric']} {fmt.format(mean)}{spread} | {delta} |")
    return "\n".join(lines)


def once_table(rows: list) -> str:
    lines = ["| weight bits | once-QAT accuracy | dedicated LSQ accuracy | difference |", "|---|---|---|---|"]
    for b in sorted({r["bits"] for r in rows}):
        once = statistics.mean(r["value"] for r in rows if r["bits"] == b and r["model"] == "once-QAT")
        alone = statistics.mean(r["value"] for r in rows if r["bits"] == b and r["model"] == "dedicated LSQ")
        lines.append(f"| {b} | {once:.4f} | {alone:.4f} | {100 * (once - alone):+.2f} pt |")
    return "\n".join(lines)


def binary_table(rows: list) -> str:
    base = statistics.mean(r["value"] for r in rows if r["model"].startswith("float"))
    lines = ["| model | seeds | accuracy (mean, min-max) | vs float |", "|---|---|---|---|"]
    for model in dict.fromkeys(r["model"] for r in rows):
        mean, lo, hi = _mean([r["value"] for r in rows if r["model"] == model])
        n = sum(r["model"] == model for r in rows)
        lines.append(f"| {model} | {n} | {mean:.4f} ({lo:.4f}-{hi:.4f}) | {100 * (mean - base):+.2f} pt |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", nargs="+", default=["grid", "once", "binary"],
                        choices=["grid", "once", "binary", "auto"])
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=list(ALGORITHMS))
    parser.add_argument("--bits", nargs="+", type=int, default=[8, 4, 3, 2])
    parser.add_argument("--backends", nargs="+", default=["generic", "tensorrt"])
    parser.add_argument("--bit-widths", nargs="+", type=int, default=[2, 3, 4, 8])
    tasks.add_grid_arguments(parser, TASKS, 400, "bench_out/qat.json")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    steps = tasks.grid_steps(args)
    start = time.perf_counter()

    def seeds_for(task):
        return tasks.default_seeds(args, task)

    def note(text):
        print(f"[{time.perf_counter() - start:6.0f}s] {text}", file=sys.stderr, flush=True)

    rows, tables = [], []
    if "grid" in args.suite:
        grid = []
        for task in args.tasks:
            for seed in seeds_for(task):
                grid.append(run_grid(task, seed, steps, None, None, None, device))
                for backend in args.backends:
                    for algorithm in args.algorithms:
                        for bits in args.bits:
                            grid.append(run_grid(task, seed, steps, algorithm, bits, backend, device))
                            note(f"{task} seed {seed} {backend} {algorithm} W{bits}A{bits}: {grid[-1]['value']:.4f}")
        rows += grid
        tables.append("### QAT grid\n\n" + grid_table(grid))
    if "once" in args.suite:
        once = [r for seed in seeds_for("digits") for r in run_once(seed, steps, args.bit_widths, device)]
        note("once-QAT done")
        rows += once
        tables.append("### Once-QAT (digits)\n\n" + once_table(once))
    if "auto" in args.suite:
        auto = []
        for task in args.tasks:
            for seed in seeds_for(task):
                auto += run_auto(task, seed, steps, device)
                note(f"auto {task} seed {seed}: " + ", ".join(f"{r['model']} {r['value']:.4f}" for r in auto[-5:]))
        rows += auto
        tables.append("### Bits per layer: auto vs uniform\n\n" + auto_table(auto))
    if "binary" in args.suite:
        bins = [r for seed in seeds_for("digits") for r in run_binary(seed, steps, device)]
        note("binarization done")
        rows += bins
        tables.append("### Binarization (digits)\n\n" + binary_table(bins))
    print("\n\n".join(tables))
    tasks.write_report(args.json, rows, steps, device)


if __name__ == "__main__":
    main()
