"""Sparse low precision, measured: the SpMM against dense and torch's CSR, pruning x quantization on the
digits ResNet and the char GPT-2, and the I/O model on random and pruned FFNs.

    python benchmarks/sparse.py --suite kernels      # CPU wall-clock ratios, one interleaved run
    python benchmarks/sparse.py --suite pruning      # accuracy vs sparsity x weight bits, model bytes
    python benchmarks/sparse.py --suite io           # I/Os: lower bound, layer order, annealed; executor speed
    python benchmarks/sparse.py                      # all three

Prints Markdown tables and writes JSON (machine, versions, command line, rows) to --json.
On CPU the SpMM runs its torch path (an exact float64 CSR product); the Triton kernel needs a GPU to be timed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tasks import char_lm_task, digits_task, progress  # noqa: E402

from effplug.kernels.spmm import spmm  # noqa: E402
from effplug.profile import write_report  # noqa: E402
from effplug.quant import QATConfig, quantize_model  # noqa: E402
from effplug.sparse import VectorSparseMatrix  # noqa: E402
from effplug.sparse.io import (  # noqa: E402
    BlockedExecutor,
    SparseFFN,
    anneal_order,
    random_sparse_ffn,
    simulate_io,
)
from effplug.sparse.pruning import Pruner, PruningConfig, out_in_view  # noqa: E402


def _best(fn, repeats=5):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def kernels_suite(size: int, tokens: int) -> list:
    torch.manual_seed(0)
    weight, x = torch.randn(size, size), torch.randn(size, tokens)
    rows = []
    for sparsity in progress((0.5, 0.75, 0.9, 0.95), desc="spmm"):
        # vector (V=4) structured mask, as pruning with pattern='vector' makes
        keep = torch.rand(size // 4, size) >= sparsity
        mask = keep.repeat_interleave(4, 0)
        masked = weight * mask
        a8 = VectorSparseMatrix.from_dense(masked, mask, 4, 8)
        a4 = VectorSparseMatrix.from_dense(masked, mask, 4, 4)
        csr = masked.to_sparse_csr()
        t_dense = _best(lambda m=masked: m @ x)
        t_csr = _best(lambda c=csr: torch.sparse.mm(c, x))
        t8 = _best(lambda a=a8: spmm(a, x, 8))
        t16 = _best(lambda a=a8: spmm(a, x, 16))
        t4 = _best(lambda a=a4: spmm(a, x, 8))
        rows.append({"sparsity": sparsity, "dense_ms": t_dense * 1e3, "csr_fp32_ms": t_csr * 1e3,
                     "spmm_int8_ms": t8 * 1e3, "spmm_int8_x_int16_ms": t16 * 1e3, "spmm_int4_ms": t4 * 1e3,
                     "weight_bytes_dense_fp32": masked.numel() * 4, "weight_bytes_int8": a8.nbytes(),
                     "weight_bytes_int4": a4.nbytes(),
                     "csr_fp32_bytes": sum(t.numel() * t.element_size()
                                           for t in (csr.crow_indices(), csr.col_indices(), csr.values()))})
    print(f"\nSpMM, {size}x{size} weight (V=4 vector mask) x {tokens} tokens, fp32 CPU, best of 5 "
          f"({torch.get_num_threads()} threads)\n")
    print("| sparsity | dense fp32 | torch CSR fp32 | effplug int8 | effplug int8 x int16 | effplug int4 | "
          "bytes: dense / CSR / int8 / int4 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        d = r["dense_ms"]
        print(f"| {r['sparsity']:.0%} | {d:.2f} ms | {r['csr_fp32_ms'] / d:.2f}x | {r['spmm_int8_ms'] / d:.2f}x | "
              f"{r['spmm_int8_x_int16_ms'] / d:.2f}x | {r['spmm_int4_ms'] / d:.2f}x | "
              f"{r['weight_bytes_dense_fp32'] / 1e6:.2f} / {r['csr_fp32_bytes'] / 1e6:.2f} / "
              f"{r['weight_bytes_int8'] / 1e6:.2f} / {r['weight_bytes_int4'] / 1e6:.2f} MB |")
    return rows


def model_bytes(model, pruner: Pruner | None, bits: int) -> int:
    """Stored bytes: pruned layers in the vector-sparse format at ``bits`` (fp32 values at 32), other
    weight matrices dense at ``bits``, vectors (biases, norms) at fp32."""
    sparse_ids, total = {}, 0
    if pruner is not None:
        for name, module in pruner.layers.items():
            if name in pruner.masks:
                sparse_ids[id(module.weight)] = (module, pruner.masks[name])
    for p in model.parameters():
        if id(p) in sparse_ids:
            module, mask = sparse_ids[id(p)]
            w2d, m2d = out_in_view(module, p.detach()), out_in_view(module, mask)
            layout = VectorSparseMatrix.from_dense(w2d, m2d, 4, 8 if bits >= 8 else 4)
            index = layout.row_ptr.numel() * 4 + layout.col_idx.numel() * 4
            total += index + (layout.nnz_vectors * 4 * 4 + layout.scales.numel() * 0 if bits == 32 else
                              layout.values.numel() + layout.scales.numel() * 4)
        elif p.dim() >= 2:
            total += p.numel() * bits // 8
        else:
            total += p.numel() * 4
    return total


def pruning_suite(steps_digits: int, steps_lm: int, seed: int) -> list:
    rows = []
    grid = [(s, b) for b in (32, 8, 4) for s in (0.0, 0.5, 0.75, 0.9)]
    for task, steps in (("digits", steps_digits), ("char-gpt2", steps_lm)):
        for sparsity, bits in progress(grid, desc=f"pruning {task}"):
            prepare = None if bits == 32 else (lambda m, b=bits: quantize_model(m, QATConfig(weight_bits=b,
                                                                                              act_bits=8)))
            factory = digits_task if task == "digits" else char_lm_task
            model, opt, batches, loss_fn, evaluate, metric = factory(seed, "cpu", prepare=prepare)
            opt = type(opt)(model.parameters(), lr=3e-3)  # QAT may have added learned scales
            pruner = None
            if sparsity:
                pruner = Pruner(model, PruningConfig(sparsity=sparsity, pattern="vector", vector=4,
                                                     schedule="cubic", start_step=steps // 10,
                                                     end_step=steps * 6 // 10, frequency=max(1, steps // 20)))
            start = time.perf_counter()
            for step, (x, y) in enumerate(batches(steps)):
                if pruner is not None:
                    pruner.update(step)
                loss = loss_fn(x, y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                if pruner is not None:
                    pruner.apply()
            rows.append({"task": task, "metric": metric, "sparsity": sparsity, "weight_bits": bits,
                         "value": evaluate(), "model_bytes": model_bytes(model, pruner, bits),
                         "measured_sparsity": pruner.sparsity() if pruner else 0.0, "steps": steps,
                         "seconds": time.perf_counter() - start})
    print(f"\nPruning (vector V=4, cubic schedule) x QAT weight bits (activations 8), seed {seed}\n")
    print("| task | weight bits | sparsity | metric | model bytes |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['task']} | {'fp32' if r['weight_bits'] == 32 else r['weight_bits']} | "
              f"{r['measured_sparsity']:.0%} | {r['metric']} {r['value']:.4f} | {r['model_bytes'] / 1e3:.1f} KB |")
    return rows


def io_suite(anneal_steps: int) -> list:
    rows = []
    nets = {f"random [64, 128, 128, 16] density {d}": random_sparse_ffn([64, 128, 128, 16], d, seed=0)
            for d in (0.05, 0.1)}
    model, opt, batches, loss_fn, evaluate, _ = digits_task(0, "cpu", model_class=_DigitsMLP, width=128)
    pruner = Pruner(model, PruningConfig(sparsity=0.9, keep_last=False))
    for step, (x, y) in enumerate(batches(400)):
        pruner.update(step if step >= 200 else -1)
        loss = loss_fn(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        pruner.apply()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    nets[f"pruned digits MLP 64-128-128-10, 90% (acc {evaluate():.3f})"] = SparseFFN.from_linears(linears)
    for name, net in nets.items():
        for memory in progress((16, 64, 256), desc=name[:20]):
            base = simulate_io(net, memory=memory)
            lru = simulate_io(net, memory=memory, policy="lru")
            _, annealed = anneal_order(net, memory, steps=anneal_steps, seed=0)
            rows.append({"network": name, "memory_words": memory, "connections": net.n_connections,
                         "lower_bound": base["lower_bound"], "layer_order_lru": lru["total"],
                         "layer_order_belady": base["total"], "annealed_belady": annealed["total"]})
    print(f"\nI/Os of sparse FFN inference (activations and weights, words), annealing {anneal_steps} steps\n")
    print("| network | M | lower bound | layer order, LRU | layer order, Belady | annealed | annealed vs layer |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['network']} | {r['memory_words']} | {r['lower_bound']} | {r['layer_order_lru']} | "
              f"{r['layer_order_belady']} | {r['annealed_belady']} | "
              f"{1 - r['annealed_belady'] / r['layer_order_belady']:.1%} fewer |")
    # wall clock: the blocked executor against torch's CSR and dense, layer by layer, on the pruned MLP
    net = nets[list(nets)[-1]]
    executor = BlockedExecutor(net, memory=256)
    x = torch.rand(256, 64)
    dense = [m.weight.detach().clone() for m in linears]
    csr = [w.to_sparse_csr() for w in dense]
    biases = [m.bias.detach() for m in linears]

    def layered(inputs, mats, mm):
        h = inputs.T
        for i, (w, b) in enumerate(zip(mats, biases, strict=True)):
            h = mm(w, h) + b[:, None]
            if i < len(mats) - 1:
                h = h.clamp_min(0)
        return h.T

    for batch in (1, 256):
        xb = x[:batch]
        t_exec = _best(lambda xb=xb: executor(xb), 7)
        t_csr = _best(lambda xb=xb: layered(xb, csr, torch.sparse.mm), 7)
        t_dense = _best(lambda xb=xb: layered(xb, dense, torch.mm), 7)
        torch.testing.assert_close(executor(xb), layered(xb, dense, torch.mm), rtol=1e-4, atol=1e-4)
        rows.append({"executor_batch": batch, "blocks": len(executor.blocks), "executor_ms": t_exec * 1e3,
                     "torch_csr_ms": t_csr * 1e3, "dense_ms": t_dense * 1e3})
    print("\nWall clock on the pruned digits MLP, one interleaved run (best of 7)\n")
    print("| batch | blocked executor (M=256) | torch CSR, layer by layer | dense, layer by layer |")
    print("|---|---|---|---|")
    for r in rows[-2:]:
        print(f"| {r['executor_batch']} | {r['executor_ms']:.3f} ms ({r['blocks']} blocks) | "
              f"{r['torch_csr_ms']:.3f} ms | {r['dense_ms']:.3f} ms |")
    return rows


class _DigitsMLP(torch.nn.Module):
    def __init__(self, width: int = 128):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, width), torch.nn.ReLU(),
                                       torch.nn.Linear(width, width), torch.nn.ReLU(), torch.nn.Linear(width, 10))

    def forward(self, x):
        return self.net(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=["kernels", "pruning", "io", "all"], default="all")
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--steps-digits", type=int, default=400)
    parser.add_argument("--steps-lm", type=int, default=150)
    parser.add_argument("--anneal-steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="bench_out/sparse.json")
    args = parser.parse_args()
    report = {}
    if args.suite in ("kernels", "all"):
        report["kernels"] = kernels_suite(args.size, args.tokens)
    if args.suite in ("pruning", "all"):
        report["pruning"] = pruning_suite(args.steps_digits, args.steps_lm, args.seed)
    if args.suite in ("io", "all"):
        report["io"] = io_suite(args.anneal_steps)
    rows = [{"suite": suite, **row} for suite, suite_rows in report.items() for row in suite_rows]
    write_report(args.json, rows)


if __name__ == "__main__":
    main()
