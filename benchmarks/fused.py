"""The fused transformer ops on CPU: memory and time of a patched HF decoder against the unpatched one, and of
each op's torch reference against the eager unfused formula and its ``torch.compile``.

    python benchmarks/fused.py                      # about 3 minutes on 2 cores
    python benchmarks/fused.py --no-compile         # skip torch.compile (it needs a C++ compiler)
    TRITON_INTERPRET=1 python benchmarks/fused.py --liger   # Liger-Kernel as a peer (benchmarks/fused_liger.py)

Prints tables and writes docs/data/fused.json. On a GPU the Triton kernels run instead of the references; the
GPU suite (benchmarks/gpu_suite.py) times them there.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.nn import functional as F

from effplug.kernels.layer_norm import layer_norm
from effplug.kernels.linear_cross_entropy import linear_cross_entropy
from effplug.kernels.rms_norm import rms_norm
from effplug.kernels.rope import rotary_embedding
from effplug.kernels.swiglu import swiglu
from effplug.profile import saved_bytes, write_report


def _median_ms(fn, repeats=7, warmup=2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _largest_vocab_tensor(fn, vocab: int, weight_shape: tuple) -> int:
    """Bytes of the largest tensor with a vocabulary axis that ``fn`` creates, weight-shaped ones (the head
    and its gradient) excluded."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Largest(TorchDispatchMode):
        bytes = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor) and vocab in t.shape and tuple(t.shape) != weight_shape:
                    Largest.bytes = max(Largest.bytes, t.numel() * t.element_size())
            return out

    with Largest():
        fn()
    return Largest.bytes


def _gradients_held(loss) -> int:
    """Bytes the fused loss keeps on its autograd node from forward to backward (dh, dW, db): not saved
    activations, so the saved-tensor meter does not count them."""
    held, stack, seen = 0, [loss.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        held += sum(t.numel() * t.element_size() for t in getattr(node, "grads", None) or () if t is not None)
        stack += [next_node for next_node, _ in node.next_functions]
    return held


def model_rows(vocab: int, seq: int, batch: int) -> list[dict]:
    import transformers

    from effplug.hf import apply_fused_kernels

    config = transformers.LlamaConfig(hidden_size=256, intermediate_size=688, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab, head_dim=64)
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))
    rows = []
    losses = {}
    for fused in (False, True):
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(config).train()
        if fused:
            apply_fused_kernels(model)

        def step(model=model):
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            model.zero_grad(set_to_none=True)
            return loss

        losses[fused] = step().item()
        saved = saved_bytes(lambda model=model: model(input_ids=ids, labels=ids).loss).activation_bytes
        held = _gradients_held(model(input_ids=ids, labels=ids).loss)
        largest = _largest_vocab_tensor(step, vocab, (vocab, config.hidden_size))
        rows.append({"model": f"llama h256 L2 V{vocab}", "patched": fused, "saved_activation_MB": saved / 2**20,
                     "loss_gradients_held_MB": held / 2**20,
                     "largest_logits_MB": largest / 2**20, "step_ms": _median_ms(step, repeats=5),
                     "loss": losses[fused]})
    return rows


def op_rows(compile_: bool) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 1024, generator=gen)
    w = torch.ones(1024)
    a, b = torch.randn(4096, 2752, generator=gen), torch.randn(4096, 2752, generator=gen)
    h = torch.randn(2048, 256, generator=gen)
    head = torch.randn(32000, 256, generator=gen) * 0.02
    target = torch.randint(0, 32000, (2048,), generator=gen)

    def hf_rms(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))

    def silu_mul(a, b):
        return F.silu(a) * b

    def unfused_ce(h, head, target):
        return F.cross_entropy(h @ head.t(), target)

    bias = torch.zeros(1024)
    q, k = torch.randn(4, 16, 256, 64, generator=gen), torch.randn(4, 4, 256, 64, generator=gen)
    angles = torch.arange(256.0)[:, None] * 10000.0 ** (-torch.arange(0, 64, 2) / 64)
    cos, sin = (torch.cat([f(angles)] * 2, -1).expand(4, 256, 64).contiguous() for f in (torch.cos, torch.sin))

    def rotate(t):
        return torch.cat((-t[..., 32:], t[..., :32]), -1)

    def hf_rope(q, k):
        return torch.cat([(t * cos[:, None] + rotate(t) * sin[:, None]).flatten() for t in (q, k)])

    def our_rope(q, k):
        return torch.cat([t.flatten() for t in rotary_embedding(q * 1, k * 1, cos, sin, inplace=True)])

    cases = [("rms_norm [4096, 1024]", hf_rms, rms_norm, (x, w)),
             ("layer_norm [4096, 1024] (eager is aten's fused kernel)", lambda x, w, b: F.layer_norm(x, (1024,), w, b),
              layer_norm, (x, w, bias)),
             ("rope q [4, 16, 256, 64], k [4, 4, 256, 64]", hf_rope, our_rope, (q, k)),
             ("swiglu [4096, 2752]", silu_mul, swiglu, (a, b)),
             ("linear + cross-entropy [2048, 256] x V32000", unfused_ce, linear_cross_entropy, (h, head, target))]
    rows = []
    for name, eager, ours, args in cases:
        leaves = [t.clone().requires_grad_() if t.is_floating_point() else t for t in args]

        def train(fn, leaves=leaves):  # forward and backward: the fused loss does its backward in forward
            out = fn(*leaves)
            out.backward(torch.ones_like(out))

        row = {"op": name, "eager_ms": _median_ms(lambda eager=eager: train(eager)),
               "effplug_torch_ms": _median_ms(lambda ours=ours: train(ours))}
        if compile_:
            try:
                compiled = torch.compile(eager)
                start = time.perf_counter()
                train(compiled)
                row["compile_s"] = time.perf_counter() - start
                row["compiled_ms"] = _median_ms(lambda compiled=compiled: train(compiled))
            except Exception as error:  # a missing compiler is a result to report
                row["compiled_ms"] = f"failed: {type(error).__name__}"
        rows.append(row)
    return rows


def _table(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        lines.append("| " + " | ".join(f"{row.get(k):.3g}" if isinstance(row.get(k), float) else str(row.get(k))
                                       for k in keys) + " |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--liger", action="store_true",
                        help="only the Liger-Kernel comparison, in the interpreter (writes docs/data/fused_liger.json)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.liger:
        from fused_liger import liger_rows

        rows = liger_rows()
        print(_table(rows))
        write_report(args.out or "docs/data/fused_liger.json", rows, argv=argv)
        return {"liger": rows}
    torch.set_num_threads(torch.get_num_threads())
    models = model_rows(args.vocab, args.seq, args.batch)
    print(_table(models))
    ops = op_rows(not args.no_compile)
    print()
    print(_table(ops))
    write_report(args.out or "docs/data/fused.json", models + ops, argv=argv, threads=torch.get_num_threads())
    return {"models": models, "ops": ops}


if __name__ == "__main__":
    main()
