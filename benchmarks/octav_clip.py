"""OCTAV's clip against a brute-force grid optimum and fixed clipping rules (quantization MSE).

    python benchmarks/octav_clip.py                  # 200,000 samples per distribution, B = 2..8
    python benchmarks/octav_clip.py --samples 50000

For each distribution and bit-width: the MSE of OCTAV's quantizer ``clip(s 2^(1-B) round(x 2^(B-1)/s), -s, s)``
at the clip from ``effplug.quant.octav_clip``, at a 2,000-point grid optimum, at max|x| and at the 99.9th
percentile. Prints a Markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from effplug.profile import write_report  # noqa: E402
from effplug.quant import octav_clip  # noqa: E402


def samples(dist: str, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dist == "gaussian":
        return torch.randn(n, generator=g, dtype=torch.float64)
    if dist == "laplace":
        u = torch.rand(n, generator=g, dtype=torch.float64) - 0.5
        return -torch.sign(u) * torch.log1p(-2 * u.abs())
    z = torch.randn(n, generator=g, dtype=torch.float64)
    return z / torch.sqrt(torch.randn(3, n, generator=g, dtype=torch.float64).pow(2).sum(0) / 3)  # Student-t(3)


def mse(x: torch.Tensor, clip: float, bits: int) -> float:
    step = clip * 2.0 ** (1 - bits)
    return float((torch.clamp(step * torch.round(x / step), -clip, clip) - x).pow(2).mean())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--json", default="bench_out/octav_clip.json")
    args = parser.parse_args(argv)
    rows = []
    for dist in ("gaussian", "laplace", "student_t3"):
        x = samples(dist, args.samples)
        top = float(x.abs().max())
        p999 = float(x.abs().kthvalue(int(0.999 * len(x))).values)
        for bits in range(2, 9):
            s = float(octav_clip(x.float(), bits))
            grid = torch.linspace(top / 2000, top, 2000).tolist()
            errors = [mse(x, c, bits) for c in grid]
            best = min(range(len(grid)), key=errors.__getitem__)
            rows.append({"dist": dist, "bits": bits, "octav_clip": s, "oracle_clip": grid[best],
                         "octav_mse": mse(x, s, bits), "oracle_mse": errors[best], "max_mse": mse(x, top, bits),
                         "p99.9_mse": mse(x, p999, bits)})
    lines = ["| distribution | B | OCTAV clip | grid-optimal clip | MSE OCTAV | MSE grid optimum | OCTAV excess | MSE max | MSE p99.9 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dist']} | {r['bits']} | {r['octav_clip']:.3f} | {r['oracle_clip']:.3f} | {r['octav_mse']:.3e} | "
                     f"{r['oracle_mse']:.3e} | {100 * (r['octav_mse'] / r['oracle_mse'] - 1):+.2f}% | {r['max_mse']:.3e} | "
                     f"{r['p99.9_mse']:.3e} |")
    print("\n".join(lines))
    write_report(args.json, rows)


if __name__ == "__main__":
    main()
