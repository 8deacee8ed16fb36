"""AC-SGD between pipeline stages: wire bytes and convergence against the plain pipeline.

    python benchmarks/acsgd.py                 # 2 stages (gloo, this machine), tiny GPT-2 on stdlib_text
    python benchmarks/acsgd.py --epochs 4 --bits 4

Launches 2 processes, each holding one stage of a tiny GPT-2 char-LM cut by ``split_gpt2`` and trained with
``PipelineRunner(schedule="1f1b", acsgd=ACSGDConfig(bits))`` over a fixed set of windows for several epochs
(AC-SGD compresses the change of a sample's activation between epochs; epoch 1 goes exact). Each variant
(plain, then every ``--bits``) starts from the same weights and sees the same batches. Reported per variant:
last-epoch train loss, validation loss of the trained stages chained on rank 0, bytes each rank sent per
compressed step (measured at torch's P2P ops) against the plain pipeline's, median step time, and the step
time projected onto slower links (measured step + the busier rank's bytes / bandwidth). Prints a Markdown
table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import tasks  # noqa: E402

BLOCK, WINDOWS, BATCH, MICRO = 64, 512, 32, 4
LINKS_MBIT = (10_000, 1_000, 100)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def rank_main(epochs: int, bits_list: list[int], out: Path) -> None:
    import datetime

    import torch.distributed as dist

    from effplug import data, models
    from effplug.parallel.pipeline import PipelineRunner, split_gpt2
    from effplug.parallel.pipeline.acsgd import ACSGDConfig
    from effplug.profile import StepTimer

    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=300))
    rank, world = dist.get_rank(), dist.get_world_size()
    corpus, (train_x, train_y), (val_x, val_y) = data.char_lm_windows(BLOCK, WINDOWS, 256)
    rows = []
    for bits in [None, *bits_list]:
        torch.manual_seed(0)
        model = models.tiny_gpt2(vocab_size=corpus.vocab_size, n_positions=BLOCK, n_embd=64, n_layer=4, n_head=4)
        stages = split_gpt2(model, num_stages=world)
        runner = PipelineRunner(stages[rank], rank, world, schedule="1f1b", microbatches=MICRO, loss_fn=lm_loss,
                                sync_tied=True, acsgd=None if bits is None else ACSGDConfig(bits=bits))
        optimizer = torch.optim.AdamW(stages[rank].parameters(), lr=3e-3)
        gen = torch.Generator().manual_seed(1)
        losses, times, sent = [], {"exact": [], "compressed": []}, []
        timer = StepTimer(warmup=0)  # every step, split below into exact (warm-up) and compressed ones
        for _ in range(epochs):
            for batch in torch.randperm(WINDOWS, generator=gen).split(BATCH):  # same order on every rank
                before = runner.acsgd.meter.sent_bytes if runner.acsgd else 0.0
                timer.start()
                optimizer.zero_grad(set_to_none=True)
                loss = runner.run(train_x[batch], train_y[batch], sample_ids=batch)
                optimizer.step()
                dist.barrier()
                timer.stop()
                elapsed = timer.times_s[-1]
                compressed = bool(runner.acsgd and runner.acsgd.compressed)
                times["compressed" if compressed else "exact"].append(elapsed)
                if runner.acsgd is not None and compressed:
                    sent.append(runner.acsgd.meter.sent_bytes - before)
                if loss is not None:
                    losses.append(loss.item())
        # dense bytes per step: what the plain pipeline sends (activations forward, gradients back)
        dense = runner.acsgd.meter.dense_bytes_per_step if runner.acsgd else None
        states = [None] * world
        dist.all_gather_object(states, {k: v.detach() for k, v in stages[rank].state_dict().items()})
        val = None
        if rank == 0:
            for index, stage in enumerate(stages):
                stage.load_state_dict(states[index])
            with torch.no_grad():
                val = lm_loss(stages[1](stages[0](val_x)), val_y).item()
        rows.append({"bits": bits, "rank": rank, "losses": losses, "val_loss": val, "exact_step_s": times["exact"],
                     "compressed_step_s": times["compressed"], "sent_per_compressed_step": sent,
                     "dense_per_step": dense})
    (out / f"rank{rank}.json").write_text(json.dumps(rows))
    dist.barrier()
    dist.destroy_process_group()


def launch(epochs: int, bits: list[int], out: Path) -> list:
    from effplug.launch import launch_ranks

    launch_ranks([__file__, "--rank-of", str(out), "--epochs", str(epochs), "--bits", *map(str, bits)], world=2)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def summarize(per_rank: list, epochs: int) -> list:
    steps_per_epoch = WINDOWS // BATCH
    plain_steps = statistics.median(per_rank[0][0]["exact_step_s"])
    rows = []
    for variant in range(len(per_rank[0])):
        first, last = per_rank[0][variant], per_rank[1][variant]
        bits = first["bits"]
        if bits is None:
            sent = dense = None
            per_rank_sent = [None, None]
            step_s = plain_steps
        else:
            per_rank_sent = [statistics.mean(r["sent_per_compressed_step"]) for r in (first, last)]
            sent = max(per_rank_sent)
            dense = max(r["dense_per_step"] for r in (first, last))
            step_s = statistics.median(first["compressed_step_s"])
        rows.append({"variant": "plain" if bits is None else f"AC-SGD {bits}-bit", "bits": bits,
                     "train_loss_last_epoch": statistics.mean(last["losses"][-steps_per_epoch:]),
                     "val_loss": first["val_loss"], "sent_bytes_per_step": sent, "dense_bytes_per_step": dense,
                     "activation_bytes_rank0": per_rank_sent[0], "gradient_bytes_rank1": per_rank_sent[1],
                     "ratio": dense / sent if sent else 1.0, "step_s": step_s, "epochs": epochs})
    plain_dense = next(r["dense_bytes_per_step"] for r in rows if r["bits"] is not None)
    for row in rows:
        wire = row["sent_bytes_per_step"] or plain_dense  # the plain pipeline sends the dense bytes
        row["projected_s"] = {mbit: row["step_s"] + 8 * wire / (mbit * 1e6) for mbit in LINKS_MBIT}
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--bits", type=int, nargs="+", default=[4, 2])
    parser.add_argument("--json", default="bench_out/acsgd.json")
    parser.add_argument("--rank-of", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rank_of:
        return rank_main(args.epochs, args.bits, Path(args.rank_of))
    import tempfile

    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch is AC-SGD's exact warm-up")
    started = time.perf_counter()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        per_rank = launch(args.epochs, args.bits, Path(tmp))
    rows = summarize(per_rank, args.epochs)
    print(f"tiny GPT-2 (4 layers, 64 wide) on stdlib_text, 2 stages, 1F1B x {MICRO} micro-batches, {WINDOWS} windows "
          f"of {BLOCK}, batch {BATCH}, {args.epochs} epochs (epoch 1 exact); bytes per rank per compressed step\n")
    links = " | ".join(f"projected step @ {m / 1000:g} Gbit/s" if m >= 1000 else f"projected step @ {m} Mbit/s"
                       for m in LINKS_MBIT)
    print("| variant | last-epoch train loss | val loss | activations sent / step (rank 0) | gradients sent / step "
          f"(rank 1) | busier rank vs plain | step (loopback) | {links} |")
    print("|---|---|---|---|---|---|---|" + "---|" * len(LINKS_MBIT))
    dense = next(r["dense_bytes_per_step"] for r in rows if r["bits"] is not None)
    for r in rows:
        forward = r["activation_bytes_rank0"] or dense
        backward = r["gradient_bytes_rank1"] or dense
        projected = " | ".join(f"{r['projected_s'][m] * 1000:.0f} ms" for m in LINKS_MBIT)
        print(f"| {r['variant']} | {r['train_loss_last_epoch']:.3f} | {r['val_loss']:.3f} | {forward:,.0f} B "
              f"({dense / forward:.1f}x fewer) | {backward:,.0f} B ({dense / backward:.1f}x fewer) | "
              f"{r['ratio']:.2f}x | {r['step_s'] * 1000:.0f} ms | {projected} |")
    print(f"\n{time.perf_counter() - started:.0f} s wall", file=sys.stderr)
    tasks.write_report(args.json, rows, args.epochs * WINDOWS // BATCH, "cpu", world=2)
    return None


if __name__ == "__main__":
    main()
