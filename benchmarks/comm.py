"""Gradient communication compression under real DDP (gloo): bytes per step, accuracy, projected step time.

    python benchmarks/comm.py                        # 2 and 4 processes, both tasks, 3 seeds
    python benchmarks/comm.py --quick                # a smoke run: 2 processes, 1 seed, few steps

Per world size and task, every compressor trains from the same initial weights and per-rank data streams:
dense all-reduce (metered through the same adapter), top-k 1% with error feedback, natural compression,
natural dithering (7 levels, 4-bit codes, bucket 512), CGX 4-bit (bucket 1024) and torch's PowerSGD (rank 2).
Reported per compressor: bytes one rank sends per step and the ratio to dense, final accuracy / validation loss against dense, and the projected step time

    T(link) = t_step + 8 * sent_bytes / link_bits_per_s

on 1, 10 and 100 Gbit/s links, where ``t_step`` is the measured median step time on this machine (loopback
gloo, so it already includes the encode/decode work and a little local communication), and the link speed
below which the compressor's projected step beats dense: 8 * (dense_bytes - sent_bytes) / (t_step - t_dense).
Prints a Markdown table and writes JSON; ``--table-from results.json`` reprints the table of a saved run.

``--hook-time`` measures the hook instead, on a 3.2M-parameter GPT-2 (n_embd 256, 4 layers) at 2 ranks: the DDP
step, and per step the hook's own time split into encode + decode and collectives, for each compressor with its
buckets averaged on the worker thread (``overlap``, the default) and in the hook (``in hook``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import tasks  # noqa: E402

from effplug.comm import GradientCompressor, make_compressor, register  # noqa: E402
from effplug.profile import StepTimer  # noqa: E402

COMPRESSORS = {
    "dense all-reduce": lambda seed: GradientCompressor(),
    "top-k 1% + EF": lambda seed: make_compressor("topk", ratio=0.01),
    "natural": lambda seed: make_compressor("natural", seed=seed),
    "dither 7 levels": lambda seed: make_compressor("dither", levels=7, bucket_size=512, seed=seed),
    "cgx 4-bit": lambda seed: make_compressor("cgx", bits=4, bucket_size=1024, seed=seed),
    "powersgd rank 2": lambda seed: make_compressor("powersgd", rank=2, start_iter=10, seed=seed),
}
TASKS = {"digits": tasks.digits_task, "char-gpt2": tasks.char_lm_task}
BATCH = {"digits": 32, "char-gpt2": 16}  # per rank
LINKS_GBIT = (1, 10, 100)


def train_one(task: str, name: str, seed: int, steps: int, rank: int) -> dict:
    holder = {}

    def prepare(model):
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        holder["compressor"] = register(ddp, COMPRESSORS[name](seed))
        return ddp

    model, opt, batches, loss_fn, evaluate, metric = TASKS[task](seed, "cpu", prepare=prepare,
                                                                 data_seed=1000 * seed + rank)
    timer = StepTimer(warmup=steps // 10)  # the first 10% warm up
    model.train()
    for x, y in batches(steps, BATCH[task]):
        timer.start()
        opt.zero_grad(set_to_none=True)
        loss_fn(x, y).backward()
        opt.step()
        timer.stop()
    meter = holder["compressor"].meter
    return {"task": task, "compressor": name, "seed": seed, "metric": metric, "score": evaluate(),
            "bytes_per_step": meter.bytes_per_step, "dense_bytes_per_step": meter.dense_bytes_per_step,
            "step_s": timer.median_s, "collective_s_per_step": meter.collective_s / max(meter.steps, 1)}


HOOK_TIME_COMPRESSORS = ("dense all-reduce", "top-k 1% + EF", "natural", "cgx 4-bit")


def hook_time_one(name: str, overlap: bool, steps: int, rank: int) -> dict:
    """Median DDP step and the hook's per-step time on a 3.2M-parameter GPT-2; see ``--hook-time``."""
    import os

    from effplug import data, models

    os.environ["EFFPLUG_COMPILED_PHILOX"] = "1"  # compiled in the warm-up steps: a long run's steady state
    corpus = data.stdlib_text(max_chars=200_000)
    train_x, train_y = corpus.windows("train", 64, 2048, seed=0)
    torch.manual_seed(0)
    model = models.tiny_gpt2(vocab_size=corpus.vocab_size, n_positions=64, n_embd=256, n_layer=4, n_head=4)
    compressor = COMPRESSORS[name](0)
    compressor.overlaps_backward = overlap
    spent = {"s": 0.0}
    average = compressor.average

    def timed_average(*args, **kwargs):
        start = time.perf_counter()
        out = average(*args, **kwargs)
        spent["s"] += time.perf_counter() - start
        return out

    compressor.average = timed_average
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    register(ddp, compressor)
    opt = torch.optim.AdamW(ddp.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(rank)
    times = []
    for step in range(steps):
        idx = torch.randint(0, len(train_x), (8,), generator=gen)
        if step == 3:  # the first steps warm up (and DDP rebuilds its buckets)
            spent["s"], compressor.meter.collective_s, compressor.meter.steps = 0.0, 0.0, 0
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        logits = ddp(input_ids=train_x[idx]).logits
        torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), train_y[idx].reshape(-1)).backward()
        opt.step()
        times.append(time.perf_counter() - start)
    measured = steps - 3
    hook_s, collective_s = spent["s"] / measured, compressor.meter.collective_s / measured
    return {"compressor": name, "overlap": overlap, "parameters": sum(p.numel() for p in model.parameters()),
            "step_ms": statistics.median(times[3:]) * 1e3, "hook_ms": hook_s * 1e3,
            "collective_ms": collective_s * 1e3, "encode_decode_ms": (hook_s - collective_s) * 1e3,
            "bytes_per_step": compressor.meter.bytes_per_step}


def print_hook_table(rows: list) -> None:
    dense = {r["overlap"]: r["step_ms"] for r in rows if r["compressor"] == "dense all-reduce"}
    print("| compressor | buckets averaged | DDP step ms | vs dense | hook ms per step | encode + decode ms "
          "| collectives ms | bytes/step |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['compressor']} | {'on the worker (overlap)' if r['overlap'] else 'in the hook'} | "
              f"{r['step_ms']:.0f} | {r['step_ms'] / dense[r['overlap']]:.2f}x | {r['hook_ms']:.0f} | "
              f"{r['encode_decode_ms']:.0f} | {r['collective_ms']:.0f} | {r['bytes_per_step']:,.0f} |")


def rank_main(work: Path) -> None:
    """One rank (launched by ``launch_ranks``): run the jobs in ``work/jobs.json``; rank 0 writes the rows."""
    import torch.distributed as dist

    spec = json.loads((work / "jobs.json").read_text())
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
    rank, world = dist.get_rank(), dist.get_world_size()
    rows = []
    for name, overlap in spec.get("hook_jobs", []):
        rows.append({**hook_time_one(name, overlap, spec["hook_steps"], rank), "world_size": world})
    for task, name, seed in spec["jobs"]:
        row = train_one(task, name, seed, spec["steps"][task], rank)
        rows.append({**row, "world_size": world})
        if rank == 0:
            print(f"  W={world} {task:9s} {name:16s} seed {seed}: {row['metric']} {row['score']:.4f}, "
                  f"{row['bytes_per_step']:.0f} B/step, {row['step_s'] * 1e3:.1f} ms/step", flush=True)
    if rank == 0:
        (work / "rows.json").write_text(json.dumps(rows))
    dist.barrier()
    dist.destroy_process_group()


def run_world(world: int, jobs: list, steps: dict, **extra) -> list:
    import tempfile

    from effplug.launch import launch_ranks

    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        (work / "jobs.json").write_text(json.dumps({"jobs": jobs, "steps": steps, **extra}))
        logs = launch_ranks([__file__, "--rank-of", str(work)], world=world, timeout=7200)
        print(logs[0], end="", file=sys.stderr)
        return json.loads((work / "rows.json").read_text())


def summarize(rows: list) -> list:
    table = []
    for world in sorted({r["world_size"] for r in rows}):
        for task in TASKS:
            dense = [r for r in rows if r["world_size"] == world and r["task"] == task and r["compressor"] == "dense all-reduce"]
            if not dense:
                continue
            dense_score = statistics.mean(r["score"] for r in dense)
            dense_bytes = dense[0]["dense_bytes_per_step"]
            dense_step = statistics.median(r["step_s"] for r in dense)
            for name in COMPRESSORS:
                runs = [r for r in rows if r["world_size"] == world and r["task"] == task and r["compressor"] == name]
                if not runs:
                    continue
                sent = statistics.mean(r["bytes_per_step"] for r in runs)
                step = statistics.median(r["step_s"] for r in runs)
                scores = [r["score"] for r in runs]
                entry = {"world_size": world, "task": task, "compressor": name, "metric": runs[0]["metric"],
                         "score_mean": statistics.mean(scores), "score_min": min(scores), "score_max": max(scores),
                         "delta_vs_dense": statistics.mean(scores) - dense_score, "bytes_per_step": sent,
                         "ratio_vs_dense": dense_bytes / sent, "step_ms": step * 1e3, "seeds": len(runs)}
                for gbit in LINKS_GBIT:
                    entry[f"projected_ms_{gbit}g"] = (step + 8 * sent / (gbit * 1e9)) * 1e3
                    entry[f"dense_projected_ms_{gbit}g"] = (dense_step + 8 * dense_bytes / (gbit * 1e9)) * 1e3
                # the link speed below which this compressor's projected step beats dense's
                extra_s, saved_bits = step - dense_step, 8 * (dense_bytes - sent)
                entry["break_even_mbit"] = (saved_bits / extra_s / 1e6 if extra_s > 0 else float("inf")) \
                    if saved_bits > 0 else None
                table.append(entry)
    return table


def print_table(table: list) -> None:
    print("| W | task | compressor | bytes/step | vs dense | metric (mean [min, max]) | Δ vs dense | ms/step (measured) "
          "| projected ms @1 / 10 / 100 Gbit/s | beats dense below |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for e in table:
        scale, unit = (100, " pt") if e["metric"] == "accuracy" else (1, "")
        proj = " / ".join(f"{e[f'projected_ms_{g}g']:.1f}" for g in LINKS_GBIT)
        print(f"| {e['world_size']} | {e['task']} | {e['compressor']} | {e['bytes_per_step']:,.0f} | "
              f"{e['ratio_vs_dense']:.1f}x | {e['score_mean'] * scale:.2f} [{e['score_min'] * scale:.2f}, "
              f"{e['score_max'] * scale:.2f}] | {e['delta_vs_dense'] * scale:+.2f}{unit} | {e['step_ms']:.1f} | {proj} | "
              f"{_mbit(e.get('break_even_mbit'))} |")


def _mbit(value) -> str:
    if value is None:
        return "-"
    return "any link" if value == float("inf") else f"{value:,.0f} Mbit/s"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worlds", type=int, nargs="+", default=None, help="process counts (default 2 4)")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--compressors", nargs="+", default=list(COMPRESSORS), choices=list(COMPRESSORS))
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default: digits 400, char-gpt2 300)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default="bench_out/comm.json")
    parser.add_argument("--table-from", metavar="JSON", help="print the table from a saved run's rows; no training")
    parser.add_argument("--hook-time", action="store_true", help="time the hook on a 3.2M-parameter GPT-2 instead")
    parser.add_argument("--rank-of", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rank_of:
        return rank_main(Path(args.rank_of))
    if args.hook_time:
        hook_jobs = [(name, overlap) for name in HOOK_TIME_COMPRESSORS for overlap in (True, False)]  # True: forced on CPU
        rows = run_world(2, [], {}, hook_jobs=hook_jobs, hook_steps=args.steps or 23)
        print_hook_table(rows)
        tasks.write_report(args.json.replace("comm.json", "comm_hook.json"), rows, {"gpt2-3.2M": args.steps or 23},
                           "cpu", worlds=[2])
        return
    if args.table_from:
        print_table(summarize(json.loads(Path(args.table_from).read_text())["rows"]))
        return
    worlds = args.worlds or ([2] if args.quick else [2, 4])
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    steps = {"digits": args.steps or (40 if args.quick else 400), "char-gpt2": args.steps or (30 if args.quick else 300)}
    rows = []
    started = time.perf_counter()
    for world in worlds:
        jobs = [(task, name, seed) for task in args.tasks for seed in seeds for name in args.compressors]
        rows += run_world(world, jobs, steps)
    table = summarize(rows)
    print_table(table)
    print(f"\nT(link) = t_step + 8 * bytes_per_step / link; {time.perf_counter() - started:.0f} s wall", file=sys.stderr)
    tasks.write_report(args.json, rows, steps, "cpu", worlds=worlds, seeds=seeds, table=table,
                       formula="T(link) = t_step + 8 * bytes_per_step / (link bits per second)")


if __name__ == "__main__":
    main()
