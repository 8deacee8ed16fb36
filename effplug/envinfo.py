"""What ``effplug env`` prints: versions, devices, Triton usability, active kernel backend."""

from __future__ import annotations

import importlib.metadata
import platform
import sys

import torch

from effplug.kernels import dispatch

PACKAGES = ("torch", "triton", "pytorch-lightning", "transformers", "accelerate", "deepspeed", "scikit-learn")


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def triton_status() -> str:
    if not dispatch.triton_installed():
        return "not installed (pip install 'effplug[triton]')"
    if torch.cuda.is_available():
        return "usable on CUDA"
    if dispatch.triton_interpreting():
        return "usable through the interpreter (TRITON_INTERPRET=1, CPU, slow)"
    return "installed, but no GPU: kernels use the torch reference (TRITON_INTERPRET=1 runs them on CPU)"


def environment() -> dict:
    import effplug

    devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {
        "effplug": effplug.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": __import__("os").cpu_count(),
        "packages": {name: _version(name) for name in PACKAGES},
        "cuda_devices": devices,
        "triton": triton_status(),
        "kernel_backend": dispatch.active_backend_name(),
    }


def format_environment(env: dict) -> str:
    lines = [f"effplug {env['effplug']} | python {env['python']} | {env['platform']}"]
    lines += [f"  {name:<18} {version}" for name, version in env["packages"].items()]
    lines.append(f"  devices            cpu ({env['cpu_count']} cores)" + "".join(f", cuda: {d}" for d in env["cuda_devices"]))
    lines.append(f"  triton             {env['triton']}")
    lines.append(f"  kernel backend     {env['kernel_backend']}")
    return "\n".join(lines)
