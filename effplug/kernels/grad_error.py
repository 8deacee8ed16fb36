"""The gradient error a calibration probe measures (GACT's sensitivity, Liu et al. 2022, eq. 6; COMET's bound
check): per parameter tensor, ``||a - b||^2`` and ``||b||^2`` with ``a`` the probed gradient and ``b`` the
reference, in one read of each. Triton kernel with a torch reference of the same contract.

Contract. The difference is taken in fp32 and squared in float64 (exact), then summed in float64 per program
and over programs. The summation orders differ, so the two paths agree to float64 rounding (about 1e-16
relative), far below what the sensitivities are compared at. Results stay on the device: a caller that
measures many tensors reads them back once.
"""

from __future__ import annotations

import torch

from effplug.kernels import dispatch
from effplug.kernels.regions import fused_op


def squared_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """float64 ``[||a - b||^2, ||b||^2]`` of two same-shape float tensors, as a 2-element device tensor."""
    if a.shape != b.shape:
        raise ValueError(f"squared_error needs tensors of one shape; got {list(a.shape)} and {list(b.shape)}")
    a, b = a.reshape(-1).contiguous(), b.reshape(-1).contiguous()
    if dispatch.kernel_backend(b) == "triton" and b.numel():
        def run():
            err, ref = dispatch.triton_kernels().squared_error(a, b)
            return torch.stack([err.sum(), ref.sum()])
    else:
        def run():
            d = (a.float() - b.float()).double()
            return torch.stack([d.square().sum(), b.double().square().sum()])
    return fused_op("squared_error", "reduction", run, a, b)
