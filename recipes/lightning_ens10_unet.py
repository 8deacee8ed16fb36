"""ENS-10 t850 post-processing with a U-Net in a stock Lightning Trainer, trained on the Gaussian CRPS with
2-bit compressed activations (or QAT), on the published files or synthetic ones of the same layout.

    python recipes/lightning_ens10_unet.py                          # synthetic files under ens10_synthetic/
    python recipes/lightning_ens10_unet.py --root /data/ens10 --train-years 1998 2014 --val-years 2015 2015
    python recipes/lightning_ens10_unet.py --qat                    # W4A8 QAT instead of compressed activations

Prints the validation and test CRPS in K; the checkpoint carries the normalisation fitted on the training years.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytorch_lightning as pl

from effplug.callbacks import ActivationCompression, QuantizationAwareTraining
from effplug.weather import CRPSRegressionModule, ENS10DataModule, UNet, write_synthetic_ens10


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="the folder of ENS10_pl_mean.nc and friends (default: write synthetic ones)")
    parser.add_argument("--target", default="t850", choices=["t850", "z500", "t2m"])
    parser.add_argument("--train-years", type=int, nargs=2, default=[1998, 2014])
    parser.add_argument("--val-years", type=int, nargs=2, default=[2015, 2015])
    parser.add_argument("--test-years", type=int, nargs=2, default=[2016, 2017])
    parser.add_argument("--qat", action="store_true")
    parser.add_argument("--max-steps", type=int, default=400)
    parser.add_argument("--out", default="ens10_unet")
    args = parser.parse_args(argv)

    root = args.root or write_synthetic_ens10(Path(args.out) / "ens10_synthetic", years=tuple(range(1998, 2018)),
                                              dates_per_year=8, grid=(32, 64))
    pl.seed_everything(0, verbose=False)
    data = ENS10DataModule(root, args.target, batch_size=8, train_years=args.train_years, val_years=args.val_years,
                           test_years=args.test_years)
    module = CRPSRegressionModule(UNet(data.dataset.channels, width=16), lr=3e-3)
    plugin = QuantizationAwareTraining(weight_bits=4, act_bits=8) if args.qat else ActivationCompression(bits=2)
    trainer = pl.Trainer(max_steps=args.max_steps, accelerator="auto", logger=False, default_root_dir=args.out,
                         callbacks=[plugin], val_check_interval=min(50, args.max_steps), check_val_every_n_epoch=None)
    trainer.fit(module, data)
    result = {"val_crps": float(trainer.callback_metrics["val_crps"]),
              **trainer.test(module, data, verbose=False)[0]}
    print(f"{args.target}: validation CRPS {result['val_crps']:.4f}, test CRPS {result['test_crps']:.4f} "
          f"(physical units, {'W4A8 QAT' if args.qat else '2-bit saved activations'})")
    return result


if __name__ == "__main__":
    main()
