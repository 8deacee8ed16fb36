"""The torch reference kernels on CPU as ratios to ``x.clone()``, and the transient memory of one encode.

    python benchmarks/kernels_vs_clone.py               # one thread, 16M fp32 elements
    python benchmarks/kernels_vs_clone.py --elements 1M

Each op is timed as one warm-up call and then the mean of three, next to ``x.clone()`` in the same process.
Transient memory is the peak resident memory a fresh process gains from one 4-bit encode (output included;
Linux only), so each row runs in its own subprocess. Prints a Markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from effplug.kernels import log_quantize, pow2_round, quantize_pack, unpack_dequantize  # noqa: E402
from effplug.profile import write_report  # noqa: E402


def _mean_seconds(fn, calls: int = 3) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def ratios(n: int) -> list[dict]:
    torch.manual_seed(0)
    x = torch.randn(n)
    packed = quantize_pack(x, 4, 128, True, seed=1)
    ops = {"4-bit pack, nearest": lambda: quantize_pack(x, 4, 128, False),
           "4-bit pack, stochastic": lambda: quantize_pack(x, 4, 128, True, seed=1),
           "4-bit unpack": lambda: unpack_dequantize(packed),
           "pow2_round": lambda: pow2_round(x, seed=1),
           "log_quantize 4-bit": lambda: log_quantize(x, 4, seed=1)}
    clone = _mean_seconds(lambda: x.clone())
    return [{"op": name, "elements": n, "ratio_to_clone": _mean_seconds(fn) / clone} for name, fn in ops.items()]


def transient_mb(n: int, stochastic: bool) -> float:
    """In a fresh process: the peak resident memory one encode adds on top of its input (Linux ``VmHWM``,
    reset through ``/proc/self/clear_refs`` after the input exists; ``ru_maxrss`` would carry the parent's)."""
    code = ("import torch; torch.set_num_threads(1); from effplug.kernels import quantize_pack\n"
            "def kb(field):\n"
            "    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(field))\n"
            f"x = torch.empty({n}).normal_()\n"
            "open('/proc/self/clear_refs', 'w').write('5')\n"
            "base = kb('VmRSS:')\n"
            f"quantize_pack(x, 4, 128, {stochastic}, seed=1)\n"
            "print((kb('VmHWM:') - base) / 1024)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    return float(done.stdout.strip().splitlines()[-1])


def parse_size(text: str) -> int:
    units = {"K": 2**10, "M": 2**20}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units else int(text)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--elements", default="16M")
    parser.add_argument("--json", default="bench_out/kernels_vs_clone.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    n = parse_size(args.elements)
    rows = ratios(n)
    for stochastic in (False, True):
        rows.append({"op": f"transient MB, 4-bit {'stochastic' if stochastic else 'nearest'} encode",
                     "elements": n, "transient_mb": transient_mb(n, stochastic), "input_mb": n * 4 / 2**20})
    print(f"CPU, 1 thread, {n:,} fp32 elements\n")
    print("| op | ratio to clone / transient MB |\n|---|---|")
    for r in rows:
        value = f"{r['ratio_to_clone']:.1f}x" if "ratio_to_clone" in r else f"{r['transient_mb']:.0f} MB (input {r['input_mb']:.0f} MB)"
        print(f"| {r['op']} | {value} |")
    write_report(args.json, rows, device="cpu (1 thread)")


if __name__ == "__main__":
    main()
