"""Quantization-aware training of the digits ResNet in a stock Lightning Trainer, then integer export.

    python recipes/lightning_qat_digits.py                                   # W4A4 LSQ, generic preset
    python recipes/lightning_qat_digits.py --weight-estimator octav --act-estimator octav --backend tensorrt
    python recipes/lightning_qat_digits.py --bit-widths 2 3 4 8              # once-QAT: one model, every width

Prints test accuracy of the fake-quant model and of the integer-only model rebuilt from the export, and
saves the export (a plain dict of tensors) next to the checkpoint.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytorch_lightning as pl
import torch

from effplug import data, models
from effplug.callbacks import QuantizationAwareTraining
from effplug.lit_modules import ClassifierModule
from effplug.quant import export_quantized, integer_model, set_bits


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weight-bits", type=int, default=4)
    parser.add_argument("--act-bits", type=int, default=4)
    parser.add_argument("--weight-estimator", default="lsq")
    parser.add_argument("--act-estimator", default="lsq")
    parser.add_argument("--backend", default="generic")
    parser.add_argument("--bit-widths", type=int, nargs="+", default=None)
    parser.add_argument("--max-steps", type=int, default=400)
    parser.add_argument("--out", default="qat_digits")
    args = parser.parse_args(argv)

    pl.seed_everything(0, verbose=False)
    split = data.digits()
    loader = torch.utils.data.DataLoader(split.train_dataset(), batch_size=64, shuffle=True)
    module = ClassifierModule(models.DigitsResNet(width=32), lr=3e-3)
    qat = QuantizationAwareTraining(weight_bits=args.weight_bits, act_bits=args.act_bits,
                                    weight_estimator=args.weight_estimator, act_estimator=args.act_estimator,
                                    backend=args.backend, bit_widths=args.bit_widths)
    trainer = pl.Trainer(max_steps=args.max_steps, accelerator="auto", devices=1, logger=False,
                         default_root_dir=args.out, callbacks=[qat], enable_model_summary=False)
    trainer.fit(module, loader)

    module = module.cpu().eval()
    results = {}
    for bits in args.bit_widths or [args.weight_bits]:
        if args.bit_widths:
            set_bits(module, bits)
        exported = export_quantized(module)
        integer = integer_model(module, exported)
        with torch.no_grad():
            fake = (module(split.test_x).argmax(-1) == split.test_y).float().mean().item()
            real = (integer(split.test_x).argmax(-1) == split.test_y).float().mean().item()
        results[bits] = (fake, real)
        print(f"W{bits}: fake-quant accuracy {fake:.4f}, integer-only accuracy {real:.4f}")
        Path(args.out).mkdir(parents=True, exist_ok=True)
        torch.save(exported, Path(args.out) / f"export_w{bits}.pt")
    return results


if __name__ == "__main__":
    main()
