"""Pipeline-parallel training of an HF GPT-2 on Python's own sources, one stage per process.

    torchrun --nproc_per_node 2 recipes/hf_pipeline_gpt2.py                     # 1F1B, 4 micro-batches
    torchrun --nproc_per_node 2 recipes/hf_pipeline_gpt2.py --schedule chimera  # bidirectional, 2 replicas
    torchrun --nproc_per_node 4 recipes/hf_pipeline_gpt2.py --schedule gpipe --microbatches 8
    torchrun --nproc_per_node 2 recipes/hf_pipeline_gpt2.py --acsgd-bits 4 --windows 512  # AC-SGD boundaries

The model is built from an HF config and cut with ``effplug.parallel.pipeline.split_gpt2`` (embeddings on the
first stage, final norm and head on the last, blocks balanced by parameters); each rank keeps its stage and
trains it with AdamW. GPT-2's tied embedding and head live on the first and last stage as two copies whose
gradients are summed (``sync_tied``); under Chimera they are not kept tied. On CPU the processes use gloo. The
last stage prints the loss.

``--acsgd-bits`` sends stage boundaries through AC-SGD (GPipe/1F1B): a sample's first pass goes exact, later
passes send its activation change at 2-4 bits and the gradient at 8 bits. It pays off when samples repeat, so
pair it with a small ``--windows`` (the training set) and enough steps for several epochs.
"""

from __future__ import annotations

import argparse

import torch
import torch.distributed as dist

from effplug import data, models
from effplug.parallel.pipeline import build_pipeline, split_gpt2
from effplug.parallel.pipeline.acsgd import ACSGDConfig
from effplug.parallel.pipeline.builder import check_pipeline_settings


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedule", default="1f1b", choices=["gpipe", "1f1b", "chimera"])
    parser.add_argument("--microbatches", type=int, default=4)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--windows", type=int, default=4096, help="training windows (the fixed training set)")
    parser.add_argument("--acsgd-bits", type=int, choices=[2, 4, 8], default=None)
    args = parser.parse_args(argv)
    acsgd = ACSGDConfig(bits=args.acsgd_bits) if args.acsgd_bits else None
    try:  # fail before joining the process group
        check_pipeline_settings(args.schedule, acsgd)
    except ValueError as error:
        parser.error(str(error))

    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", rank % torch.cuda.device_count()) if torch.cuda.is_available() else torch.device("cpu")
    block = 64
    corpus, (train_x, train_y), _ = data.char_lm_windows(block, train_windows=args.windows)
    torch.manual_seed(0)
    model = models.tiny_gpt2(vocab_size=corpus.vocab_size, n_positions=block, n_embd=64, n_layer=4, n_head=4)
    runner, mine = build_pipeline(model.to(device), lambda m: split_gpt2(m, num_stages=world), args.schedule,
                                  args.microbatches, lm_loss, rank=rank, world=world, device=device, acsgd=acsgd)
    optimizer = torch.optim.AdamW([p for m in mine for p in m.parameters()], lr=3e-3)
    gen = torch.Generator().manual_seed(1)
    losses = []
    batches: list = []
    for step in range(args.steps):
        if not batches:  # a new epoch over the fixed windows, in the same order on every rank
            batches = list(torch.randperm(len(train_x), generator=gen).split(args.batch))
            batches = [b for b in batches if len(b) == args.batch]  # fixed micro-batch shapes
        idx = batches.pop(0)
        x, y = train_x[idx].to(device), train_y[idx].to(device)
        optimizer.zero_grad(set_to_none=True)
        loss = runner.run(x, y, sample_ids=idx)
        optimizer.step()
        if loss is not None:
            losses.append(loss.item())
            if step % max(args.steps // 5, 1) == 0 or step == args.steps - 1:
                print(f"rank {rank} step {step}: loss {loss.item():.3f}", flush=True)
    result = {"losses": losses}
    if runner.acsgd is not None:
        meter = runner.acsgd.meter
        print(f"rank {rank} AC-SGD {args.acsgd_bits}-bit: {meter.bytes_per_step:,.0f} bytes/step sent vs "
              f"{meter.dense_bytes_per_step:,.0f} plain ({meter.ratio:.2f}x fewer, warm-up steps included)", flush=True)
        result["acsgd_ratio"] = meter.ratio
    dist.barrier()
    dist.destroy_process_group()
    return result


if __name__ == "__main__":
    main()
