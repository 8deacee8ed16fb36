"""Liger-Kernel as a peer: the same inputs through Liger's Triton kernels and effplug's, both in the Triton
interpreter on CPU, each compared with a float64 reference (forward and input gradients).

    pip install --no-deps liger-kernel==0.8.5     # a comparison only, never an effplug requirement
    TRITON_INTERPRET=1 python benchmarks/fused.py --liger

Liger's kernels run as shipped. Those that the interpreter rejects (scalar ``.to`` and libdevice ``rsqrt``,
see ../shared/research/kernels.md §3.2) are reported as failing, with their error, not edited.
"""

from __future__ import annotations

import os

import torch
from torch.nn import functional as F


def _max_error(results, reference) -> float:
    return max(float((r.double() - e).abs().max()) for r, e in zip(results, reference, strict=True))


def _forward_backward(fn, inputs, weight, constants):
    """Output and input gradients of ``fn`` on clones of ``inputs`` (Liger writes into some of them); the
    last ``constants`` inputs take no gradient."""
    leaves = [t.detach().clone().requires_grad_(t.is_floating_point() and i < len(inputs) - constants)
              for i, t in enumerate(inputs)]
    out = fn(*leaves)
    out = out[0] if isinstance(out, tuple) else out
    (out.double() * weight(out)).sum().backward()
    return [out.detach()] + [leaf.grad for leaf in leaves if leaf.requires_grad]


def _cases():
    from liger_kernel.ops.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyFunction
    from liger_kernel.ops.geglu import LigerGELUMulFunction
    from liger_kernel.ops.layer_norm import LigerLayerNormFunction
    from liger_kernel.ops.rms_norm import LigerRMSNormFunction
    from liger_kernel.ops.rope import LigerRopeFunction
    from liger_kernel.ops.softmax import LigerSoftmaxFunction
    from liger_kernel.ops.swiglu import LigerSiLUMulFunction

    from effplug.kernels.gelu import geglu
    from effplug.kernels.layer_norm import layer_norm
    from effplug.kernels.linear_cross_entropy import linear_cross_entropy
    from effplug.kernels.rms_norm import rms_norm
    from effplug.kernels.rope import rotary_embedding
    from effplug.kernels.softmax import scaled_masked_softmax
    from effplug.kernels.swiglu import swiglu

    gen = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(64, 96, generator=gen), torch.randn(96, generator=gen), torch.randn(96, generator=gen)
    gate, up = torch.randn(64, 160, generator=gen), torch.randn(64, 160, generator=gen)
    q, k = torch.randn(2, 4, 16, 32, generator=gen), torch.randn(2, 2, 16, 32, generator=gen)
    # HF's layout: the two halves of cos and sin repeat (Liger reads the first half only)
    angles = torch.arange(16.0)[:, None] * 10000.0 ** (-torch.arange(0, 32, 2) / 32)
    cos, sin = (torch.cat([f(angles)] * 2, -1).expand(2, 16, 32).contiguous() for f in (torch.cos, torch.sin))
    scores = torch.randn(2, 4, 16, 40, generator=gen)
    h, head = torch.randn(96, 48, generator=gen), torch.randn(500, 48, generator=gen) * 0.1
    target = torch.randint(0, 500, (96,), generator=gen)

    def rotate(t):
        return torch.cat((-t[..., t.shape[-1] // 2:], t[..., :t.shape[-1] // 2]), -1)

    def rope_qk(fn):  # both rotated tensors as one output: Liger's backward needs both gradients
        return lambda q, k, cos, sin: torch.cat([t.flatten() for t in fn(q * 1, k * 1, cos, sin)])

    return [
        ("rms_norm [64, 96]", (x, w),
         lambda x, w: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w,
         lambda x, w: rms_norm(x, w, 1e-6),
         lambda x, w: LigerRMSNormFunction.apply(x, w, 1e-6, 0.0, "llama", False)),
        ("layer_norm [64, 96]", (x, w, b),
         lambda x, w, b: F.layer_norm(x, (96,), w, b, 1e-5),
         lambda x, w, b: layer_norm(x, w, b, 1e-5),
         lambda x, w, b: LigerLayerNormFunction.apply(x, w, b, 1e-5)),
        ("swiglu [64, 160]", (gate, up), lambda a, b: F.silu(a) * b, swiglu, LigerSiLUMulFunction.apply),
        ("geglu tanh [64, 160]", (gate, up), lambda a, b: F.gelu(a, approximate="tanh") * b,
         lambda a, b: geglu(a, b, "tanh"), LigerGELUMulFunction.apply),
        ("rope q [2, 4, 16, 32], k [2, 2, 16, 32]", (q, k, cos, sin),
         rope_qk(lambda q, k, c, s: (q * c[:, None] + rotate(q) * s[:, None], k * c[:, None] + rotate(k) * s[:, None])),
         rope_qk(lambda q, k, c, s: rotary_embedding(q, k, c, s, inplace=True)),
         rope_qk(LigerRopeFunction.apply)),
        ("softmax [2, 4, 16, 40]", (scores,), lambda s: F.softmax(s, -1),
         lambda s: scaled_masked_softmax(s, 1.0, None), LigerSoftmaxFunction.apply),
        ("linear + cross-entropy [96, 48] x V500", (h, head, target),
         lambda h, w, t: F.cross_entropy(h @ w.t(), t),
         lambda h, w, t: linear_cross_entropy(h, w, t),
         lambda h, w, t: LigerFusedLinearCrossEntropyFunction.apply(h, w, t)),
    ]


def liger_rows() -> list[dict]:
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("the Liger comparison runs both libraries' Triton kernels on CPU: run it as "
                         "TRITON_INTERPRET=1 python benchmarks/fused.py --liger")
    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        raise SystemExit("Liger-Kernel is not installed: pip install --no-deps liger-kernel==0.8.5 "
                         "(a benchmark peer only)") from None
    os.environ["EFFPLUG_KERNELS"] = "triton"
    rows = []
    for name, inputs, reference, ours, liger in _cases():
        constants = 2 if name.startswith("rope") else 0  # cos and sin
        gen = torch.Generator().manual_seed(1)
        cache = {}

        def weight(out, gen=gen, cache=cache):  # one fixed upstream gradient per output shape
            if out.shape not in cache:
                cache[out.shape] = torch.randn(out.shape, generator=gen, dtype=torch.float64)
            return cache[out.shape]

        expected = _forward_backward(reference, [t.double() if t.is_floating_point() else t for t in inputs],
                                     weight, constants)
        row = {"op": name}
        for label, fn in (("effplug", ours), ("liger", liger)):
            try:
                got = _forward_backward(fn, inputs, weight, constants)
                row[f"{label}_forward_err"] = _max_error(got[:1], expected[:1])
                row[f"{label}_grad_err"] = _max_error(got[1:], expected[1:])
            except Exception as error:  # a kernel the interpreter rejects is a result
                row[f"{label}_forward_err"] = (f"fails{' as shipped' if label == 'liger' else ''}: "
                                               f"{type(error).__name__}: {str(error)[:60]}")
                row[f"{label}_grad_err"] = "-"
        rows.append(row)
    return rows
