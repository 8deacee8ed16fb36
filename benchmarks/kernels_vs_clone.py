"""The torch reference kernels on CPU as ratios to ``x.clone()``, and the transient memory of one encode.

    python benchmarks/kernels_vs_clone.py               # one thread, 16M fp32 elements
    python benchmarks/kernels_vs_clone.py --elements 1M

Peers, when installed, are timed on the same job in the same run (benchmark-only, never effplug requirements):

    pip install --no-deps bitsandbytes==0.50.2 torchao==0.18.0

bitsandbytes: ``quantize_4bit`` / ``dequantize_4bit`` (FP4, absmax per block of 128, nearest). torchao:
``choose_qparams_affine`` + ``quantize_affine`` / ``dequantize_affine`` (asymmetric uint8 codes 0..15 per group
of 128, unpacked: one byte per code). Neither offers stochastic rounding or power-of-two rounding.

Each op is timed as one warm-up call and then the mean of three, next to ``x.clone()`` in the same process,
with the compiled Philox rounds (what a training run gets after its first 32M random words) and with the eager
ones (``EFFPLUG_COMPILED_PHILOX=0``, what a short run gets).
Transient memory is the peak resident memory a fresh process gains from one 4-bit encode (output included;
Linux only), so each row runs in its own subprocess. Prints a Markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import os
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
    peers = _peer_ops(x)
    rows = []
    for name, fn in ops.items():
        clone = _mean_seconds(lambda: x.clone())  # next to every op: the ratios share the machine's state
        with _philox("0"):
            eager = _mean_seconds(fn)
        with _philox("1"):
            fn()  # the first call of a process compiles the Philox rounds (once; inductor caches it on disk)
            row = {"op": name, "elements": n, "ratio_to_clone": _mean_seconds(fn) / clone,
                   "eager_philox_ratio_to_clone": eager / clone}
        for peer, peer_ops in peers.items():
            if name in peer_ops:
                row[f"{peer}_ratio_to_clone"] = _mean_seconds(peer_ops[name]) / clone
        rows.append(row)
    return rows


@contextlib.contextmanager
def _philox(mode: str):
    """EFFPLUG_COMPILED_PHILOX for the block: "1" the compiled rounds, "0" the eager ones."""
    before = os.environ.get("EFFPLUG_COMPILED_PHILOX")
    os.environ["EFFPLUG_COMPILED_PHILOX"] = mode
    try:
        yield
    finally:
        if before is None:
            del os.environ["EFFPLUG_COMPILED_PHILOX"]
        else:
            os.environ["EFFPLUG_COMPILED_PHILOX"] = before


def _peer_ops(x: torch.Tensor) -> dict:
    """The same jobs in bitsandbytes and torchao, where installed: {peer: {op: fn}}."""
    peers = {}
    try:
        import bitsandbytes.functional as bnb

        packed, state = bnb.quantize_4bit(x, blocksize=128)
        peers["bitsandbytes"] = {"4-bit pack, nearest": lambda: bnb.quantize_4bit(x, blocksize=128),
                                 "4-bit unpack": lambda: bnb.dequantize_4bit(packed, state)}
    except ImportError:
        pass
    try:
        from torchao.quantization.quant_primitives import (
            MappingType,
            choose_qparams_affine,
            dequantize_affine,
        )
        from torchao.quantization.quant_primitives import quantize_affine as ao_quantize

        block, args = (128,), dict(quant_min=0, quant_max=15)

        def ao_pack():
            scale, zero = choose_qparams_affine(x, MappingType.ASYMMETRIC, block, torch.uint8, **args)
            return ao_quantize(x, block, scale, zero, torch.uint8, **args)

        scale, zero = choose_qparams_affine(x, MappingType.ASYMMETRIC, block, torch.uint8, **args)
        codes = ao_quantize(x, block, scale, zero, torch.uint8, **args)
        peers["torchao"] = {"4-bit pack, nearest": ao_pack,
                            "4-bit unpack": lambda: dequantize_affine(codes, block, scale, zero, torch.uint8, **args)}
    except ImportError:
        pass
    return peers


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
    peers = [p for p in ("bitsandbytes", "torchao") if any(f"{p}_ratio_to_clone" in r for r in rows)]
    print("| op | effplug: ratio to clone / transient MB | effplug, eager Philox |" + "".join(f" {p} |" for p in peers))
    print("|---|---|---|" + "---|" * len(peers))
    for r in rows:
        value = f"{r['ratio_to_clone']:.1f}x" if "ratio_to_clone" in r else f"{r['transient_mb']:.0f} MB (input {r['input_mb']:.0f} MB)"
        value += f" | {r['eager_philox_ratio_to_clone']:.1f}x" if "eager_philox_ratio_to_clone" in r else " | –"
        cells = "".join(f" {r[f'{p}_ratio_to_clone']:.1f}x |" if f"{p}_ratio_to_clone" in r else " – |" for p in peers)
        print(f"| {r['op']} | {value} |{cells}")
    write_report(args.json, rows, device="cpu (1 thread)")


if __name__ == "__main__":
    main()
