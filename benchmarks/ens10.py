"""ENS-10 post-processing of t850 on synthetic files of the published layout: the raw ensemble, EMOS, the
per-point MLP and the U-Net trained on the Gaussian CRPS, then the U-Net with effplug's QAT and compressed
activations (the plain-loop doors, ``quantize_model`` and ``compressed_activations``).

    python benchmarks/ens10.py                   # 3 seeds, a 32 x 64 grid, 8 dates a year for 1998-2017
    python benchmarks/ens10.py --quick

Training 1998-2014, validation 2015 (the best validation step's weights are kept), test 2016-2017. Scores on
the test years, in K: the Gaussian CRPS, and the extreme-event weighted CRPS with each point's EFI taken
against the training years' ensemble means at that point (the model climate). Saved activations: what one
training batch saves for backward. Prints a Markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tasks import progress  # noqa: E402

from effplug.compress import compressed_activations  # noqa: E402
from effplug.profile import saved_bytes, write_report  # noqa: E402
from effplug.quant import QATConfig, quantize_model  # noqa: E402
from effplug.weather import (  # noqa: E402
    EMOS,
    ENS10Dataset,
    PointMLP,
    UNet,
    crps_gaussian,
    ee_crps,
    extreme_forecast_index,
    write_synthetic_ens10,
)

ROWS = ("raw ensemble", "EMOS", "MLP", "U-Net", "U-Net + QAT W8A8", "U-Net + QAT W4A8", "U-Net + ActNN 4-bit",
        "U-Net + ActNN 2-bit")


def _tensors(dataset):
    return (torch.stack([dataset[i][0] for i in range(len(dataset))]),
            torch.stack([dataset[i][1] for i in range(len(dataset))]))


def _raw_forecast(x, dataset):
    """The ensemble's own Gaussian (mean, spread) in the target's normalised units."""
    n, (mc, sc) = dataset.normalization, dataset.target_channels
    mean = x[:, mc] * n.input_std[mc] + n.input_mean[mc]
    spread = x[:, sc] * n.input_std[sc] + n.input_mean[sc]
    return ((mean - n.target_mean) / n.target_std).float(), (spread / n.target_std).float().clamp_min(1e-3)


def _train(model, splits, steps, lr, seed, batch=8):
    (x, y), (vx, vy) = splits["train"], splits["val"]
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    best, best_state = float("inf"), None
    for step in progress(range(steps), desc=f"seed {seed}"):
        model.train()
        idx = torch.randint(len(x), (batch,), generator=gen)
        mu, sigma = model(x[idx])
        loss = crps_gaussian(mu, sigma, y[idx]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 25 == 0 or step + 1 == steps:
            model.eval()
            with torch.no_grad():
                val = float(crps_gaussian(*model(vx), vy).mean())
            if val < best:
                best, best_state = val, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    model.eval()


def run(seed: int, root: Path, steps: int) -> list:
    train = ENS10Dataset(root, "t850", (1998, 2014))
    splits = {"train": _tensors(train), "val": _tensors(ENS10Dataset(root, "t850", (2015, 2015), train.normalization)),
              "test": _tensors(ENS10Dataset(root, "t850", (2016, 2017), train.normalization))}
    scale = train.normalization.target_std
    tx, ty = splits["test"]
    climate = _raw_forecast(splits["train"][0], train)[0]  # training-years ensemble means per point
    raw_mu, raw_sigma = _raw_forecast(tx, train)
    efi = extreme_forecast_index(raw_mu, raw_sigma, climate)
    # one batch of its own storage, as a DataLoader yields it: a view of the whole training tensor would make
    # the meter count that tensor's storage, which the view keeps alive
    batch = splits["train"][0][:8].clone(), splits["train"][1][:8].clone()
    rows = []
    for name in ROWS:
        torch.manual_seed(seed)
        start, held, exact = time.perf_counter(), None, None
        if name == "raw ensemble":
            mu, sigma = raw_mu, raw_sigma
        else:
            if name == "EMOS":
                model, lr = EMOS(*train.target_channels), 3e-2
            elif name == "MLP":
                model, lr = PointMLP(train.channels), 3e-3
            else:
                model, lr = UNet(train.channels, width=16), 3e-3
            if "QAT" in name:
                bits = 8 if "W8" in name else 4
                quantize_model(model, QATConfig(weight_bits=bits, act_bits=8))
            if "ActNN" in name:
                with compressed_activations(model, bits=int(name.split()[-1][0]), scope="model") as engine:
                    _train(model, splits, steps, lr, seed)
                    model.train()
                    loss = lambda m=model: crps_gaussian(*m(batch[0]), batch[1]).mean()  # noqa: E731
                    loss().backward()
                    report = engine.last_report
                model.zero_grad(set_to_none=True)
                exact = saved_bytes(loss, parameters=model).activation_bytes
                held = exact - report.original_bytes + report.held_bytes
            else:
                _train(model, splits, steps, lr, seed)
                model.train()
                exact = held = saved_bytes(lambda m=model: crps_gaussian(*m(batch[0]), batch[1]).mean(),
                                           parameters=model).activation_bytes
            model.eval()
            with torch.no_grad():
                mu, sigma = model(tx)
        rows.append({"seed": seed, "model": name, "crps_K": float(crps_gaussian(mu, sigma, ty).mean()) * scale,
                     "ee_crps_K": float(ee_crps(mu, sigma, ty, efi)) * scale, "saved_bytes": held,
                     "wall_s": time.perf_counter() - start})
    return rows


def table(rows: list) -> str:
    lines = ["| model | seeds | test CRPS K (mean [min, max]) | vs raw | vs U-Net | EE-CRPS K | saved activations "
             "MB (batch 8) |", "|---|---|---|---|---|---|---|"]
    mean = {m: statistics.mean(r["crps_K"] for r in rows if r["model"] == m) for m in ROWS}
    for name in ROWS:
        runs = [r for r in rows if r["model"] == name]
        crps = [r["crps_K"] for r in runs]
        saved = [r["saved_bytes"] for r in runs if r["saved_bytes"] is not None]
        unet = f"{100 * (mean[name] / mean['U-Net'] - 1):+.1f}%" if name.startswith("U-Net") else "-"
        lines.append(f"| {name} | {len(runs)} | {mean[name]:.4f} [{min(crps):.4f}, {max(crps):.4f}] | "
                     f"{100 * (mean[name] / mean['raw ensemble'] - 1):+.1f}% | {unet} | "
                     f"{statistics.mean(r['ee_crps_K'] for r in runs):.4f} | "
                     f"{statistics.mean(saved) / 2**20:.2f} |" if saved else
                     f"| {name} | {len(runs)} | {mean[name]:.4f} [{min(crps):.4f}, {max(crps):.4f}] | - | - | "
                     f"{statistics.mean(r['ee_crps_K'] for r in runs):.4f} | - |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--grid", type=int, nargs=2, default=[32, 64])
    parser.add_argument("--dates-per-year", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="one seed, a 16 x 32 grid, 30 steps (a smoke run)")
    parser.add_argument("--json", default="bench_out/ens10.json")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.steps, args.grid, args.dates_per_year = [0], 30, [16, 32], 4
    rows, start = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for i, seed in enumerate(args.seeds):
            root = write_synthetic_ens10(Path(tmp) / f"seed{seed}", years=tuple(range(1998, 2018)),
                                         dates_per_year=args.dates_per_year, grid=tuple(args.grid), seed=seed)
            rows += run(seed, root, args.steps)
            print(f"[{i + 1}/{len(args.seeds)}] seed {seed} done ({time.perf_counter() - start:.0f} s)",
                  file=sys.stderr, flush=True)
    print(table(rows))
    write_report(args.json, rows, steps=args.steps, grid=args.grid, dates_per_year=args.dates_per_year)


if __name__ == "__main__":
    main()
