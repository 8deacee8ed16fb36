"""The GPU story in one command (under 8 minutes on one GPU), in this order:

1. the GPU tests (kernel tests with real Triton launches, the compile tier);
2. kernel bandwidth: 4-bit ``quantize_pack`` (nearest and stochastic) on 64M bf16, as % of copy bandwidth
   (goal >= 70%);
3. step-time overhead of ActNN 4-bit on a GPT-2 small-sized model (12 x 768, sequence 1024; goal <= 15%);
4. peak memory of that step, baseline against compressed;
5. sparse SpMM (``effplug.kernels.spmm``, Triton on CUDA) against dense fp16 matmul and torch's Triton BSR
   kernel at 50/75/90/95% vector sparsity (docs/sparse.md);
6. the fused transformer ops (docs/fused-kernels.md) in bf16, forward + backward: effplug's Triton kernels
   against the eager formula and, when installed, Liger-Kernel, with each one's error against fp32 eager;
7. host syncs per compressed step, per method (``torch.cuda.set_sync_debug_mode``), and per DDP-free gradient
   average of each compressor (one process).

    python benchmarks/gpu_suite.py                 # on a GPU: runs all six steps, appends the tables to docs/benchmarks.md
    python benchmarks/gpu_suite.py --cpu-check     # anywhere: the same code on tiny sizes (a check, not a measurement)

Without a GPU and without ``--cpu-check`` it refuses with exit status 2 and says what to do. Prints Markdown
tables and writes JSON (``effplug.profile.write_report``); the GPU run names the device in both.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from effplug.profile import StepTimer, time_steps, write_report  # noqa: E402

FULL = {"elements": 64 * 2**20, "layers": 12, "width": 768, "heads": 12, "sequence": 1024, "batch": 8, "steps": 20,
        "spmm": 4096}
CHECK = {"elements": 2**16, "layers": 2, "width": 64, "heads": 2, "sequence": 32, "batch": 2, "steps": 3, "spmm": 64}


def run_gpu_tests(check: bool) -> dict:
    """The kernel tests with real launches (no interpreter), and the compile tier."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    tests = (["tests/test_kernels.py", "tests/test_compile_tier.py", "tests/test_gpu_syncs.py"] if not check
             else ["tests/test_compile_tier.py"])
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", *tests], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=420)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-300:]
    return {"step": "GPU tests", "command": "pytest -q " + " ".join(tests), "passed": done.returncode == 0,
            "summary": summary, "seconds": time.perf_counter() - started}


def kernel_bandwidth(device: torch.device, sizes: dict) -> list[dict]:
    from effplug.kernels import packed_nbytes, quantize_pack

    n = sizes["elements"]
    x = torch.randn(n, device=device, dtype=torch.bfloat16)
    out = torch.empty_like(x)
    steps = sizes["steps"]
    copy_s = time_steps(lambda: out.copy_(x), steps=steps, warmup=3, device=device).median_s
    copy_gbs = 2 * x.numel() * x.element_size() / copy_s / 1e9
    rows = []
    for stochastic in (False, True):
        seconds = time_steps(lambda s=stochastic: quantize_pack(x, 4, 128, s, seed=1, scale_dtype=torch.bfloat16),
                             steps=steps, warmup=3, device=device).median_s
        moved = x.numel() * x.element_size() + packed_nbytes(n, 4, 128, torch.bfloat16)
        gbs = moved / seconds / 1e9
        rows.append({"step": "kernel bandwidth", "kernel": f"quantize_pack 4-bit {'SR' if stochastic else 'nearest'}",
                     "elements": n, "gbs": gbs, "copy_gbs": copy_gbs, "pct_of_copy": 100 * gbs / copy_gbs,
                     "goal": ">= 70% of copy"})
    return rows


def _gpt2(sizes: dict, device: torch.device):
    from effplug.models import tiny_gpt2

    torch.manual_seed(0)
    model = tiny_gpt2(vocab_size=50257 if sizes is FULL else 128, n_positions=sizes["sequence"],
                      n_embd=sizes["width"], n_layer=sizes["layers"], n_head=sizes["heads"]).to(device)
    ids = torch.randint(0, model.config.vocab_size, (sizes["batch"], sizes["sequence"]), device=device)
    return model, ids


def step_overhead_and_peak(device: torch.device, sizes: dict) -> list[dict]:
    from effplug.compress import ActivationCompressor

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows = {}
    for config in ("baseline", "actnn 4-bit"):
        model, ids = _gpt2(sizes, device)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        engine = ActivationCompressor(model, method="actnn", bits=4, seed=0).attach() if config != "baseline" else None
        timer = StepTimer(warmup=2, device=device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(sizes["steps"] + 2):
            timer.start()
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            timer.stop()
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        rows[config] = {"step_s": timer.median_s, "peak_bytes": peak,
                        "saved_ratio": engine.last_report.ratio if engine is not None else 1.0}
        if engine is not None:
            engine.detach()
        del model, optimizer
    base, compressed = rows["baseline"], rows["actnn 4-bit"]
    return [{"step": "step time and peak memory", "model": f"GPT-2 {sizes['layers']}x{sizes['width']}, "
             f"batch {sizes['batch']} x {sizes['sequence']}", "config": name, **r,
             "step_ratio": r["step_s"] / base["step_s"],
             "peak_ratio": (r["peak_bytes"] / base["peak_bytes"]) if base["peak_bytes"] else None,
             "goal": "step <= 1.15x baseline" if name != "baseline" else ""}
            for name, r in rows.items()] if compressed else []


def sparse_spmm(device: torch.device, sizes: dict) -> list[dict]:
    from effplug.kernels.spmm import spmm
    from effplug.sparse import VectorSparseMatrix

    n, steps = sizes["spmm"], sizes["steps"]
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(n, n, generator=gen)
    x = torch.randn(n, n // 4, generator=gen).to(device, dtype)
    rows = []
    for sparsity in (0.5, 0.75, 0.9, 0.95):
        mask = (torch.rand(n // 4, n, generator=gen) >= sparsity).repeat_interleave(4, 0)
        a = VectorSparseMatrix.from_dense(weight * mask, mask, 4, 8)
        a = VectorSparseMatrix(a.shape, a.vector, a.bits, *(t.to(device) for t in (a.row_ptr, a.col_idx, a.values,
                                                                                   a.scales, a.element_mask)))
        dense = (weight * mask).to(device, dtype)
        row = {"step": "sparse spmm", "size": f"{n}x{n} @ {n}x{n // 4}", "sparsity": sparsity,
               "dense_ms": 1e3 * time_steps(lambda d=dense: d @ x, steps=steps, warmup=2, device=device).median_s,
               "effplug_int8_ms": 1e3 * time_steps(lambda m=a: spmm(m, x, 8), steps=steps, warmup=2,
                                                   device=device).median_s, "bsr_ms": None}
        if device.type == "cuda":
            try:
                from torch.sparse._triton_ops import bsr_dense_mm

                bsr = dense.to_sparse_bsr((32, 32))
                row["bsr_ms"] = 1e3 * time_steps(lambda b=bsr: bsr_dense_mm(b, x), steps=steps, warmup=2,
                                                 device=device).median_s
            except Exception as error:  # a torch build without it: say so in the table
                row["bsr_error"] = f"{type(error).__name__}: {error}"[:120]
        rows.append(row)
    return rows


def _fused_cases(device: torch.device, sizes: dict):
    """(name, eager formula, effplug op, inputs) at a Llama-7B-like row width; tiny on a CPU check."""
    from torch.nn import functional as F

    from effplug.kernels.layer_norm import layer_norm
    from effplug.kernels.linear_cross_entropy import linear_cross_entropy
    from effplug.kernels.rms_norm import rms_norm
    from effplug.kernels.rope import rotary_embedding
    from effplug.kernels.softmax import scaled_masked_softmax
    from effplug.kernels.swiglu import swiglu

    big = sizes is FULL
    rows, hidden, inner, vocab = (8192, 4096, 11008, 32000) if big else (64, 32, 48, 100)
    heads, seq, dim = (32, 1024, 128) if big else (2, 16, 8)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    gen = torch.Generator().manual_seed(0)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(device, dtype)

    x, w, b = randn(rows, hidden), randn(hidden, scale=0.1) + 1, randn(hidden, scale=0.1)
    gate, up = randn(rows, inner), randn(rows, inner)
    q, k = randn(1, heads, seq, dim), randn(1, heads // 4 or 1, seq, dim)
    angles = torch.arange(float(seq))[:, None] * 10000.0 ** (-torch.arange(0, dim, 2) / dim)
    cos, sin = (torch.cat([f(angles)] * 2, -1)[None].to(device, dtype) for f in (torch.cos, torch.sin))
    scores = randn(1, heads, seq, seq)
    h, head, target = randn(rows // 2, hidden), randn(vocab, hidden, scale=0.02), \
        torch.randint(0, vocab, (rows // 2,), generator=gen).to(device)

    def rotate(t):
        return torch.cat((-t[..., dim // 2:], t[..., :dim // 2]), -1)

    return [("rms_norm", lambda x, w: w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)),
             lambda x, w: rms_norm(x, w, 1e-6), (x, w)),
            ("layer_norm", lambda x, w, b: F.layer_norm(x, (hidden,), w, b), layer_norm, (x, w, b)),
            ("swiglu", lambda a, b: F.silu(a) * b, swiglu, (gate, up)),
            ("rope", lambda q, k: torch.cat([(t * cos[:, None] + rotate(t) * sin[:, None]).flatten() for t in (q, k)]),
             lambda q, k: torch.cat([t.flatten() for t in rotary_embedding(q * 1, k * 1, cos, sin, inplace=True)]),
             (q, k)),
            ("softmax", lambda s: F.softmax(s, -1), lambda s: scaled_masked_softmax(s, 1.0), (scores,)),
            ("linear + cross-entropy", lambda h, w, t: F.cross_entropy((h @ w.t()).float(), t),
             linear_cross_entropy, (h, head, target))], (cos, sin)


def _liger_ops(device: torch.device, cos, sin) -> dict:
    """Liger-Kernel's versions of the same ops, on a GPU and when it is installed (a peer, never a requirement:
    ``pip install --no-deps liger-kernel==0.8.5``)."""
    if device.type != "cuda":
        return {}
    try:
        from liger_kernel.ops.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyFunction
        from liger_kernel.ops.layer_norm import LigerLayerNormFunction
        from liger_kernel.ops.rms_norm import LigerRMSNormFunction
        from liger_kernel.ops.rope import LigerRopeFunction
        from liger_kernel.ops.softmax import LigerSoftmaxFunction
        from liger_kernel.ops.swiglu import LigerSiLUMulFunction
    except ImportError:
        return {}

    def first(out):  # some Liger functions return (loss, extras...)
        return out[0] if isinstance(out, tuple) else out

    return {"rms_norm": lambda x, w: LigerRMSNormFunction.apply(x, w, 1e-6, 0.0, "llama", False),
            "layer_norm": lambda x, w, b: LigerLayerNormFunction.apply(x, w, b, 1e-5),
            "swiglu": LigerSiLUMulFunction.apply,
            "rope": lambda q, k: torch.cat([t.flatten() for t in LigerRopeFunction.apply(q * 1, k * 1, cos, sin)]),
            "softmax": LigerSoftmaxFunction.apply,
            "linear + cross-entropy": lambda h, w, t: first(LigerFusedLinearCrossEntropyFunction.apply(h, w, t))}


def fused_ops(device: torch.device, sizes: dict) -> list[dict]:
    """Forward + backward time of each fused op against its eager formula (and Liger's, where it is installed
    on a GPU), and each one's largest error against the eager formula in fp32."""
    rows = []
    cases, (cos, sin) = _fused_cases(device, sizes)
    liger = _liger_ops(device, cos, sin)
    for name, eager, ours, inputs in cases:
        peers = [("eager", eager), ("effplug", ours)] + ([("liger", liger[name])] if name in liger else [])
        def train(fn, inputs=inputs):  # a non-uniform upstream gradient: softmax's sum has none
            leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
            out = fn(*leaves)
            upstream = torch.linspace(-1, 1, out.numel(), device=out.device).view(out.shape)
            (out.float() * upstream).sum().backward()
            return [out.detach().float()] + [leaf.grad.float() for leaf in leaves if leaf.grad is not None]

        reference = train(eager, [t.float() if t.is_floating_point() else t for t in inputs])
        row = {"step": "fused ops", "op": name, "dtype": str(inputs[0].dtype).removeprefix("torch.")}
        for label, fn in peers:
            got = train(fn)
            row[f"{label}_error"] = max(float((g - r).abs().max()) for g, r in zip(got, reference, strict=True))
            row[f"{label}_ms"] = 1e3 * time_steps(lambda fn=fn: train(fn), steps=sizes["steps"], warmup=2,
                                                  device=device).median_s
        rows.append(row)
    return rows


def host_syncs(device: torch.device, sizes: dict) -> list[dict]:
    """Step 7: host syncs of one compressed training step per method, and of one gradient average per compressor."""
    from torch import nn

    from effplug.comm import make_compressor
    from effplug.compress import ActivationCompressor
    from effplug.profile import count_host_syncs

    def count(fn):
        if device.type == "cuda":
            return count_host_syncs(fn)
        fn()  # the CPU check runs the same code; a count needs a GPU
        return None

    width = sizes["width"]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width), nn.Tanh(),
                          nn.Linear(width, 8)).to(device)
    x = torch.randn(sizes["batch"] * 8, width, device=device)
    rows = []
    for method, options in (("actnn", {"bits": 4}), ("division", {"bits": 2}), ("mesa", {"bits": 8}),
                            ("comet", {}), ("gact", {"bits": 4})):
        with ActivationCompressor(model, method=method, seed=0, recalibrate_every=10**6, **options) as engine:
            def step(engine=engine):
                model.zero_grad(set_to_none=True)
                loss = model(x).square().mean()
                engine.calibrate(loss)
                loss.backward()

            step()  # warm-up; for gact and comet the first round of calibration
            while engine.calibration_pending or engine._round is not None:
                step()
            rows.append({"step": "host syncs", "what": f"{method} step", "syncs": count(step),
                         "tensors": len(engine.last_report.per_layer)})
    flat = torch.randn(sizes["elements"], device=device)
    for name in ("topk", "natural", "cgx", "dither"):
        compressor = make_compressor(name, **({"ratio": 0.01} if name == "topk" else {"seed": 0}))
        compressor.average(flat)
        rows.append({"step": "host syncs", "what": f"{name} average", "syncs": count(lambda c=compressor: c.average(flat)),
                     "tensors": 1})
    return rows


def tables(device_name: str, results: list[dict]) -> str:
    lines = [f"GPU suite on {device_name}: `python benchmarks/gpu_suite.py`", ""]
    for r in results:
        if r["step"] == "GPU tests":
            lines.append(f"- GPU tests (`{r['command']}`): {'passed' if r['passed'] else 'FAILED'} ({r['summary']})")
    lines += ["", "| kernel | elements | GB/s | copy GB/s | % of copy | goal |", "|---|---|---|---|---|---|"]
    for r in results:
        if r["step"] == "kernel bandwidth":
            lines.append(f"| {r['kernel']} | {r['elements']:,} | {r['gbs']:.1f} | {r['copy_gbs']:.1f} | "
                         f"{r['pct_of_copy']:.1f}% | {r['goal']} |")
    lines += ["", "| model | configuration | step ms | step ratio | peak MB | peak ratio | saved-activation ratio |",
              "|---|---|---|---|---|---|---|"]
    for r in results:
        if r["step"] == "step time and peak memory":
            peak = f"{r['peak_bytes'] / 2**20:.0f}" if r["peak_bytes"] else "n/a (CPU)"
            ratio = f"{r['peak_ratio']:.2f}" if r["peak_ratio"] else "n/a"
            lines.append(f"| {r['model']} | {r['config']} | {r['step_s'] * 1e3:.1f} | {r['step_ratio']:.2f} | {peak} | "
                         f"{ratio} | {r['saved_ratio']:.2f}x |")
    lines += ["", "| SpMM | sparsity | dense ms | effplug int8 ms | torch Triton BSR ms |", "|---|---|---|---|---|"]
    for r in results:
        if r["step"] == "sparse spmm":
            bsr = f"{r['bsr_ms']:.3f}" if r["bsr_ms"] is not None else r.get("bsr_error", "n/a (CPU)")
            lines.append(f"| {r['size']} | {r['sparsity']:.0%} | {r['dense_ms']:.3f} | {r['effplug_int8_ms']:.3f} | "
                         f"{bsr} |")
    lines += ["", "| fused op (fwd + bwd) | dtype | eager ms | effplug ms | Liger ms | eager error | effplug error | "
              "Liger error |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        if r["step"] == "fused ops":
            liger = (f"{r['liger_ms']:.3f}", f"{r['liger_error']:.2e}") if "liger_ms" in r else ("n/a", "n/a")
            lines.append(f"| {r['op']} | {r['dtype']} | {r['eager_ms']:.3f} | {r['effplug_ms']:.3f} | {liger[0]} | "
                         f"{r['eager_error']:.2e} | {r['effplug_error']:.2e} | {liger[1]} |")
    lines += ["", "| host syncs | count | layers |", "|---|---|---|"]
    for r in results:
        if r["step"] == "host syncs":
            lines.append(f"| {r['what']} | {r['syncs'] if r['syncs'] is not None else 'n/a (CPU)'} | {r['tensors']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-check", action="store_true", help="run the suite's code on tiny CPU sizes")
    parser.add_argument("--json", default="bench_out/gpu_suite.json")
    parser.add_argument("--no-docs", action="store_true", help="do not append the tables to docs/benchmarks.md")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() and not args.cpu_check:
        print("gpu_suite: no CUDA device is visible (torch.cuda.is_available() is False). Run it on a GPU machine "
              "with a CUDA build of torch, or pass --cpu-check to run the same code on tiny CPU sizes.",
              file=sys.stderr)
        return 2
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu_check else "cpu")
    sizes = CHECK if args.cpu_check else FULL
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores), check only"
    started = time.perf_counter()
    results = [run_gpu_tests(args.cpu_check)]
    results += kernel_bandwidth(device, sizes)
    results += step_overhead_and_peak(device, sizes)
    results += sparse_spmm(device, sizes)
    results += fused_ops(device, sizes)
    results += host_syncs(device, sizes)
    text = tables(device_name, results)
    print(text)
    print(f"\n{time.perf_counter() - started:.0f} s wall", file=sys.stderr)
    write_report(args.json, results, device=device_name, sizes=sizes)
    if device.type == "cuda" and not args.no_docs:
        with open(ROOT / "docs" / "benchmarks.md", "a") as docs:
            docs.write("\n\n## GPU suite\n\n" + text + "\n")
    return 0 if all(r.get("passed", True) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
