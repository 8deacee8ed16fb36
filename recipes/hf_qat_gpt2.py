"""Quantization-aware fine-tuning of a tiny GPT-2 with the stock HF Trainer, on Python's own sources.

    python recipes/hf_qat_gpt2.py                                  # W4A8, OCTAV weights, HF Conv1D layers
    python recipes/hf_qat_gpt2.py --weight-bits 2 --weight-estimator lsq
    python recipes/hf_qat_gpt2.py --fused-kernels                  # the loss fused with the (tied) head
    torchrun --nproc_per_node 2 recipes/hf_qat_gpt2.py             # DDP: convert first, the Trainer wraps

The model is converted with ``effplug.hf.apply_quantization`` before ``Trainer(...)`` builds its optimizer,
so learned step sizes are trained too. Prints validation loss and the integer-export parity.
"""

from __future__ import annotations

import argparse

import torch
import transformers

from effplug import data, models
from effplug.hf import apply_fused_kernels, apply_quantization
from effplug.quant import QATConfig, export_quantized, integer_model


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weight-bits", type=int, default=4)
    parser.add_argument("--act-bits", type=int, default=8)
    parser.add_argument("--weight-estimator", default="octav")
    parser.add_argument("--act-estimator", default="minmax")
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--fused-kernels", action="store_true",
                        help="effplug.hf.apply_fused_kernels: the training loss never builds the logits")
    parser.add_argument("--out", default="qat_gpt2")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    block = 64
    corpus, (train_x, _), (val_x, _) = data.char_lm_windows(block)
    model = models.tiny_gpt2(vocab_size=corpus.vocab_size, n_positions=block, n_embd=64, n_layer=2, n_head=4)
    if args.fused_kernels:
        apply_fused_kernels(model)
    apply_quantization(model, QATConfig(weight_bits=args.weight_bits, act_bits=args.act_bits,
                                        weight_estimator=args.weight_estimator, act_estimator=args.act_estimator))
    training_args = transformers.TrainingArguments(
        output_dir=args.out, max_steps=args.max_steps, per_device_train_batch_size=32, learning_rate=3e-3,
        logging_steps=max(args.max_steps // 10, 1), save_strategy="no", report_to=[],
        use_cpu=not torch.cuda.is_available())
    trainer = transformers.Trainer(model=model, args=training_args,
                                   train_dataset=[{"input_ids": x, "labels": x} for x in train_x],
                                   eval_dataset=[{"input_ids": x, "labels": x} for x in val_x])
    trainer.train()
    metrics = trainer.evaluate()
    model = model.cpu().eval()
    with torch.no_grad():
        fake = model(val_x[:16]).logits
        real = integer_model(model, export_quantized(model))(val_x[:16]).logits
    parity = (fake - real).abs().max().item()
    print(f"val loss {metrics['eval_loss']:.3f}; integer-only vs fake-quant max |logit difference| {parity:.2e}")
    return {"eval_loss": metrics["eval_loss"], "parity": parity}


if __name__ == "__main__":
    main()
