"""One place that chooses between the Triton kernels and their torch references.

Rule: Triton for CUDA tensors when Triton is installed, torch otherwise. ``EFFPLUG_KERNELS=torch|triton``
overrides. Forcing ``triton`` on CPU tensors needs ``TRITON_INTERPRET=1`` set before triton is imported.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

BACKENDS = ("torch", "triton")
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@functools.lru_cache(maxsize=1)
def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def requested_backend() -> str | None:
    value = os.environ.get("EFFPLUG_KERNELS", "").strip().lower()
    if value in ("", "auto"):
        return None
    if value not in BACKENDS:
        raise ValueError(f"EFFPLUG_KERNELS={value!r} is not supported; use one of torch, triton (or leave it unset)")
    return value


def kernel_backend(x: torch.Tensor) -> str:
    """Return ``"triton"`` or ``"torch"`` for a kernel call on ``x``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"kernel_backend(x) takes the tensor a kernel would run on; got {type(x).__name__}. "
                        "To force a backend, set EFFPLUG_KERNELS=torch or triton")
    forced = requested_backend()
    if forced == "torch":
        return "torch"
    if forced == "triton":
        if not triton_installed():
            raise ImportError("EFFPLUG_KERNELS=triton but triton is not installed; pip install 'effplug[triton]'")
        if not x.is_cuda and not triton_interpreting():
            raise ValueError(
                f"EFFPLUG_KERNELS=triton needs CUDA tensors (got device {x.device}); "
                "move the tensor to a GPU or set TRITON_INTERPRET=1 before importing triton to run on CPU"
            )
        return "triton"
    return "triton" if x.is_cuda and triton_installed() else "torch"


def active_backend_name() -> str:
    """What a CUDA tensor would get right now, for ``effplug env``."""
    forced = requested_backend()
    if forced:
        return forced
    if torch.cuda.is_available() and triton_installed():
        return "triton (CUDA tensors), torch (CPU tensors)"
    return "torch"


def triton_kernels():
    """Import the Triton kernel module lazily, so importing effplug never needs triton."""
    from effplug.kernels import triton_kernels as module

    return module


def check_float_tensor(x: torch.Tensor, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise ValueError(
            f"{name} has dtype {x.dtype}, which is not supported; use float32, float16 or bfloat16 "
            "(integer and bool tensors cannot be quantized)"
        )


def interpreter_block(n: int, gpu_block: int, cap: int = 65536) -> int:
    """Elements per Triton program: big blocks in the interpreter (per-program overhead dominates), else gpu_block."""
    if triton_interpreting():
        return max(16, min(cap, 1 << max(0, (max(n, 1) - 1).bit_length())))
    return gpu_block
