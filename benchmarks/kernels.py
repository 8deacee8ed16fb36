"""Effective bandwidth of every kernel and backend, as a percentage of copy bandwidth in the same run.

    python benchmarks/kernels.py                      # CPU: torch backend, sizes 256K..4M
    python benchmarks/kernels.py --sizes 1M 16M 64M   # on a GPU: torch and Triton backends

Effective GB/s = logical bytes read + written / median time. Copy bandwidth is ``dst.copy_(src)`` of the
same tensor. Prints a Markdown table and writes JSON (machine, versions, command line, rows).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from effplug.kernels import (  # noqa: E402
    dispatch,
    fake_quantize,
    log_quantize,
    packed_nbytes,
    pow2_encode,
    pow2_round,
    quantize_pack,
    topk_select,
    unpack_dequantize,
)
from effplug.profile import time_steps, write_report  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_size(text: str) -> int:
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units else int(text)


def median_seconds(fn, device, steps, warmup) -> float:
    if device.type == "cuda":
        from triton.testing import do_bench

        return do_bench(fn, warmup=25, rep=100, return_mode="median") / 1e3
    return time_steps(fn, steps=steps, warmup=warmup, device=device).median_s


def cases(x: torch.Tensor):
    n, elem = x.numel(), x.element_size()
    for bits in (2, 4, 8):
        for stochastic in (False, True):
            name = f"quantize_pack {bits}-bit {'SR' if stochastic else 'nearest'}"
            yield name, (lambda b=bits, s=stochastic: quantize_pack(x, b, 128, s, seed=1)), n * elem + packed_nbytes(n, bits, 128)
        qt = quantize_pack(x, bits, 128)
        yield f"unpack_dequantize {bits}-bit", (lambda q=qt: unpack_dequantize(q)), packed_nbytes(n, bits, 128) + n * elem
    yield "pow2_round", lambda: pow2_round(x, seed=1), 2 * n * elem
    yield "pow2_encode (8-bit codes)", lambda: pow2_encode(x, seed=1), n * elem + n
    yield "log_quantize 4-bit", lambda: log_quantize(x, 4, seed=1), 2 * n * elem
    scale = torch.tensor(0.05, device=x.device)
    yield "fake_quantize per-tensor", lambda: fake_quantize(x, scale, 0.0, -8, 7), 2 * n * elem
    k = max(1, n // 100)
    yield "topk_select 1%", lambda: topk_select(x, 0.01), n * elem + k * (elem + 8)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=None, help="element counts, e.g. 1M 64M")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--backends", nargs="+", default=None, help="torch and/or triton (default: what the device supports)")
    parser.add_argument("--steps", type=int, default=20, help="timed repetitions on CPU (median reported)")
    parser.add_argument("--json", default="bench_out/kernels.json")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sizes = [parse_size(s) for s in (args.sizes or (["1M", "16M", "64M"] if device.type == "cuda" else ["256K", "1M", "4M"]))]
    backends = args.backends or (["torch", "triton"] if device.type == "cuda" and dispatch.triton_installed() else ["torch"])
    if "triton" in backends and device.type != "cuda":
        print("note: Triton on CPU runs in the interpreter; its numbers say nothing about GPU speed", file=sys.stderr)
    dtype = DTYPES[args.dtype]
    rows = []
    for n in sizes:
        x = torch.randn(n, device=device).to(dtype)
        dst = torch.empty_like(x)
        copy_s = median_seconds(lambda d=dst, s=x: d.copy_(s), device, args.steps, 3)
        copy_gbs = 2 * x.numel() * x.element_size() / copy_s / 1e9
        for backend in backends:
            os.environ["EFFPLUG_KERNELS"] = backend
            for name, fn, nbytes in cases(x):
                seconds = median_seconds(fn, device, args.steps, 2)
                gbs = nbytes / seconds / 1e9
                rows.append({
                    "kernel": name, "backend": backend, "numel": n, "dtype": args.dtype, "time_us": seconds * 1e6,
                    "bytes": nbytes, "gbs": gbs, "copy_gbs": copy_gbs, "pct_of_copy": 100 * gbs / copy_gbs,
                })
                print(f"{name:<32} {backend:<6} n={n:>10} {seconds * 1e6:>10.1f} us {gbs:>8.1f} GB/s {100 * gbs / copy_gbs:6.1f}% of copy",
                      file=sys.stderr)
    os.environ.pop("EFFPLUG_KERNELS", None)

    device_name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"\nDevice: {device_name}; dtype {args.dtype}; command: python {' '.join(sys.argv)}\n")
    print("| kernel | backend | elements | time (us) | effective GB/s | copy GB/s | % of copy |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['kernel']} | {r['backend']} | {r['numel']:,} | {r['time_us']:.1f} | {r['gbs']:.1f} | {r['copy_gbs']:.1f} | {r['pct_of_copy']:.1f} |")
    write_report(args.json, rows, device=device_name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
