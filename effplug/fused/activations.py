"""GELU activation modules (HF's and torch's) replaced by ``effplug.kernels.gelu.FusedGELU``, in any family."""

from __future__ import annotations

from torch import nn

from effplug.kernels.gelu import FusedGELU

# class name -> the approximation it computes
GELU_CLASSES = {"GELUActivation": "none", "NewGELUActivation": "tanh", "GELUTanh": "tanh",
                "PytorchGELUTanh": "tanh", "FastGELUActivation": None, "QuickGELUActivation": None}


def _approximation(module: nn.Module) -> str | None:
    if type(module) is nn.GELU:
        return module.approximate
    return GELU_CLASSES.get(type(module).__name__)


def patch_gelu(model: nn.Module) -> list[str]:
    """Swap every exact or tanh GELU module for the fused one; returns the swapped modules' names. The fast
    and quick variants compute other curves and are left as they are."""
    patched = []
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            approximate = _approximation(child)
            if approximate is not None:
                setattr(parent, child_name, FusedGELU(approximate))
                patched.append(f"{parent_name}.{child_name}" if parent_name else child_name)
    return patched
