"""Data-parallel training of a tiny GPT-2 with the stock HF Trainer, gradients sent compressed.

    torchrun --nproc_per_node 2 recipes/hf_comm_gpt2.py                       # CGX 4-bit
    torchrun --nproc_per_node 2 recipes/hf_comm_gpt2.py --compressor topk --ratio 0.01
    torchrun --nproc_per_node 2 recipes/hf_comm_gpt2.py --compressor natural

``effplug.hf.compress_gradients(trainer, ...)`` registers the compressor on ``trainer.model_wrapped`` when
training begins. On CPU the processes use gloo. Rank 0 prints the validation loss and the bytes one rank
sent per step against dense all-reduce.
"""

from __future__ import annotations

import argparse

import torch
import transformers

from effplug import data, models
from effplug.hf import compress_gradients


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compressor", default="cgx", choices=["topk", "natural", "cgx", "powersgd"])
    parser.add_argument("--ratio", type=float, default=0.01, help="top-k: fraction of values sent")
    parser.add_argument("--bits", type=int, default=4, help="cgx: bits per value (1, 2, 4 or 8)")
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--out", default="comm_gpt2")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    block = 64
    corpus, (train_x, _), (val_x, _) = data.char_lm_windows(block)
    model = models.tiny_gpt2(vocab_size=corpus.vocab_size, n_positions=block, n_embd=64, n_layer=2, n_head=4)
    on_gpu = torch.cuda.is_available()
    training_args = transformers.TrainingArguments(
        output_dir=args.out, max_steps=args.max_steps, per_device_train_batch_size=16, learning_rate=3e-3,
        logging_steps=max(args.max_steps // 10, 1), save_strategy="no", report_to=[],
        use_cpu=not on_gpu, ddp_backend=None if on_gpu else "gloo")
    trainer = transformers.Trainer(model=model, args=training_args,
                                   train_dataset=[{"input_ids": x, "labels": x} for x in train_x],
                                   eval_dataset=[{"input_ids": x, "labels": x} for x in val_x])
    options = {"topk": {"ratio": args.ratio}, "cgx": {"bits": args.bits}}.get(args.compressor, {})
    callback = compress_gradients(trainer, args.compressor, **options)
    trainer.train()
    metrics = trainer.evaluate()
    meter = callback.compressor.meter
    result = {"val_loss": metrics["eval_loss"], "bytes_per_step": meter.bytes_per_step,
              "dense_bytes_per_step": meter.dense_bytes_per_step, "ratio": meter.ratio}
    if trainer.is_world_process_zero():
        print(f"{args.compressor}: val loss {result['val_loss']:.3f}; {result['bytes_per_step']:,.0f} bytes/step "
              f"sent per rank vs {result['dense_bytes_per_step']:,.0f} dense ({result['ratio']:.1f}x fewer)")
    return result


if __name__ == "__main__":
    main()
