"""Per-layer sensitivity for bit allocation: the Hessian trace (HAWQ-v2) or the cheaper empirical Fisher.

* ``"hessian"``: Hutchinson's estimator (Avron & Toledo 2011), as HAWQ-v2 (Dong et al., NeurIPS 2020, Sec. 3.1)
  uses it: ``Tr(H) = E[vᵀ H v]`` for Rademacher ``v``. One double backward gives ``H v`` for the whole model, and
  each layer's block ``v_lᵀ (H v)_l`` is an unbiased estimate of ``Tr(H_ll)`` (the off-diagonal blocks vanish in
  expectation). Probes stop when every layer's running mean moves by less than ``tol`` (relative), PyHessian's
  rule, or at ``max_probes``; the standard error of each trace is reported.
* ``"fisher"``: the empirical Fisher trace ``Σ ||∇_l L||²`` over the calibration losses, one backward each.

``losses`` are zero-argument closures returning a scalar loss of the model on a fixed calibration batch, so a
Lightning ``training_step`` or an HF ``compute_loss`` serves as well as a plain loop's loss.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

log = logging.getLogger("effplug.quant")

METHODS = ("hessian", "fisher")


@dataclass(frozen=True)
class LayerSensitivity:
    name: str
    numel: int
    trace: float  # Tr(H_l) or Tr(F_l), summed over the layer's weights
    stderr: float  # standard error of ``trace`` over probes (0 for one Fisher batch)
    probes: int


def layer_sensitivity(model: nn.Module, layers: dict[str, nn.Parameter], losses: Sequence[Callable[[], torch.Tensor]],
                      method: str = "hessian", max_probes: int = 32, min_probes: int = 4, tol: float = 1e-2,
                      seed: int = 0, progress: Callable[[int, int], None] | None = None
                      ) -> dict[str, LayerSensitivity]:
    """Sensitivity of each weight in ``layers`` (name -> parameter), averaged over ``losses``.

    ``progress(done, most)`` is called after each probe (Hessian) or batch (Fisher), for a progress bar.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r}: choose one of {METHODS} (hessian: HAWQ-v2 trace; fisher: cheaper)")
    if not losses:
        raise ValueError("layer_sensitivity needs at least one calibration loss closure (a batch of training data)")
    if not 1 <= min_probes <= max_probes:
        raise ValueError(f"min_probes={min_probes!r}, max_probes={max_probes!r}: use 1 <= min_probes <= max_probes")
    names, params = list(layers), list(layers.values())
    was_training = model.training
    model.eval()  # dropout off: every probe sees the same function
    try:
        samples = _hutchinson(params, losses, max_probes, min_probes, tol, seed, progress) \
            if method == "hessian" else _fisher(params, losses, progress)
    finally:
        model.train(was_training)
    out = {}
    for i, name in enumerate(names):
        values = torch.tensor([s[i] for s in samples], dtype=torch.float64)
        stderr = float(values.std() / math.sqrt(len(values))) if len(values) > 1 else 0.0
        out[name] = LayerSensitivity(name, params[i].numel(), float(values.mean()), stderr, len(values))
    return out


def _hutchinson(params, losses, max_probes, min_probes, tol, seed, progress=None) -> list[list[float]]:
    gen = torch.Generator().manual_seed(seed)
    samples: list[list[float]] = []
    means = None
    for probe in range(max_probes):
        vs = [(torch.randint(0, 2, p.shape, generator=gen) * 2 - 1).to(p) for p in params]
        try:
            # the math attention kernel: the fused CPU/GPU ones have no double backward
            with sdpa_kernel([SDPBackend.MATH]):
                loss = losses[probe % len(losses)]()
                grads = torch.autograd.grad(loss, params, create_graph=True)
                hv = torch.autograd.grad(grads, params, grad_outputs=vs, allow_unused=True)
        except RuntimeError as err:
            raise RuntimeError(f"the Hessian trace needs double backward through the model, which failed ({err}); "
                               "use search_method='fisher' (one backward per batch) instead") from err
        samples.append([float((v * h).sum()) if h is not None else 0.0 for v, h in zip(vs, hv, strict=True)])
        if progress is not None:
            progress(len(samples), max_probes)
        new = [sum(col) / len(samples) for col in zip(*samples, strict=True)]
        if means is not None and len(samples) >= min_probes and all(
                abs(n - m) <= tol * max(abs(m), 1e-12) for n, m in zip(new, means, strict=True)):
            break
        means = new
    return samples


def _fisher(params, losses, progress=None) -> list[list[float]]:
    samples = []
    for loss_fn in losses:
        grads = torch.autograd.grad(loss_fn(), params, allow_unused=True)
        samples.append([float(g.pow(2).sum()) if g is not None else 0.0 for g in grads])
        if progress is not None:
            progress(len(samples), len(losses))
    return samples
