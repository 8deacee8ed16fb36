"""Per-rank model-state bytes under DDP, ZeRO 1/2/3 (DeepSpeed) and FSDP2, measured against the ZeRO formulas.

    python benchmarks/zero_memory.py                       # 2 processes on this machine (gloo), MLP width 512
    python benchmarks/zero_memory.py --world 4 --width 1024

Launches ``--world`` copies of itself as ranks of one Lightning run per strategy (fp32, Adam, a few steps
of digits), reads every rank's parameters, gradients and optimizer states with
``effplug.lit_modules.ModelStateCallback`` and prints them next to ``effplug.parallel.zero.estimate_memory``
(4 + 4 + K bytes per parameter: K = 12 for DeepSpeed's fp32 master + Adam moments, 8 for torch Adam under
DDP and FSDP2). Gradients for stages 0 and 1 are the peak held during backward (where the formula puts a
full gradient); from stage 2 on, the partition held for the step. Prints a Markdown table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import tasks  # noqa: E402

STEPS = 3  # measured before the optimizer step of step 2
STRATEGIES = [("ddp", 0, 8), ("zero1", 1, 12), ("zero2", 2, 12), ("zero3", 3, 12), ("fsdp2", 3, 8)]


def rank_main(width: int, out: Path) -> None:
    import pytorch_lightning as pl

    import effplug.strategies  # noqa: F401
    from effplug import data
    from effplug.lit_modules import ClassifierModule, ModelStateCallback
    from effplug.strategies import ZeroStrategy

    torch.set_num_threads(1)
    world, rank = int(os.environ["WORLD_SIZE"]), os.environ["RANK"]  # read now: a finished DDP run unsets them
    split = data.digits()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(split.train_x.flatten(1), split.train_y),
                                         batch_size=16)
    rows = []
    for name, stage, k in STRATEGIES:
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(64, width), torch.nn.ReLU(), torch.nn.Linear(width, width),
                                  torch.nn.ReLU(), torch.nn.Linear(width, 10))
        num_params = sum(p.numel() for p in net.parameters())  # before ZeRO-3 empties the module's tensors
        strategy = ZeroStrategy(stage=3, param_persistence_threshold=0) if name == "zero3" else name
        meter = ModelStateCallback(at_step=2)
        trainer = pl.Trainer(accelerator="cpu", devices=world, strategy=strategy, max_steps=STEPS,
                             logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, callbacks=[meter])
        trainer.fit(ClassifierModule(net, lr=1e-3), loader)
        rows.append({"strategy": name, "stage": stage, "optimizer_bytes_per_param": k, **meter.states,
                     "peak_grad": meter.peak_grad_bytes, "num_params": num_params})
    (out / f"rank{rank}.json").write_text(json.dumps(rows))


def launch(world: int, width: int, out: Path) -> list:
    from effplug.launch import launch_ranks

    launch_ranks([__file__, "--rank-of", str(out), "--width", str(width)], world=world)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


def table(per_rank: list, world: int) -> list:
    from effplug.parallel.zero import estimate_memory

    entries = []
    for rank, rows in enumerate(per_rank):
        for row in rows:
            est = estimate_memory(row["num_params"], world, row["stage"], param_bytes=4, grad_bytes=4,
                                  optimizer_bytes=row["optimizer_bytes_per_param"])
            grads = row["peak_grad"] if row["stage"] <= 1 else row["grads"]
            for part, measured, formula in (("params", row["params"], est.param_bytes),
                                            ("grads", grads, est.grad_bytes),
                                            ("optimizer", row["optimizer"], est.optimizer_bytes)):
                entries.append({"rank": rank, "strategy": row["strategy"], "stage": row["stage"], "part": part,
                                "measured": measured, "formula": formula, "ratio": measured / formula,
                                "num_params": row["num_params"]})
    return entries


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--json", default="bench_out/zero_memory.json")
    parser.add_argument("--rank-of", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rank_of:
        return rank_main(args.width, Path(args.rank_of))
    import tempfile

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        per_rank = launch(args.world, args.width, Path(tmp))
    entries = table(per_rank, args.world)
    psi = entries[0]["num_params"]
    print(f"Ψ = {psi:,} parameters, N = {args.world} ranks, fp32 (bytes per rank; rank 0 shown, max ratio over ranks)\n")
    print("| strategy | ZeRO stage | part | measured B | formula B | formula | measured / formula |")
    print("|---|---|---|---|---|---|---|")
    symbolic = {("params", 3): "4Ψ/N", ("params", 0): "4Ψ", ("grads", 0): "4Ψ", ("grads", 1): "4Ψ",
                ("grads", 2): "4Ψ/N", ("grads", 3): "4Ψ/N"}
    for e in [e for e in entries if e["rank"] == 0]:
        worst = max(x["ratio"] for x in entries if x["strategy"] == e["strategy"] and x["part"] == e["part"])
        k = {"ddp": 8, "fsdp2": 8}.get(e["strategy"], 12)
        formula = symbolic.get((e["part"], e["stage"]), "4Ψ" if e["part"] == "params" else "")
        if e["part"] == "optimizer":
            formula = f"{k}Ψ" if e["stage"] == 0 else f"{k}Ψ/N"
        print(f"| {e['strategy']} | {e['stage']} | {e['part']} | {e['measured']:,.0f} | {e['formula']:,.0f} | {formula} | "
              f"{e['ratio']:.4f} (max {worst:.4f}) |")
    print(f"\n{time.perf_counter() - started:.0f} s wall", file=sys.stderr)
    tasks.write_report(args.json, entries, STEPS, "cpu", world=args.world, width=args.width)
    return None


if __name__ == "__main__":
    main()
