"""Fused transformer ops patched into instantiated models (Liger-Kernel's ``apply_liger_kernel_to_*`` shape):
``apply_fused_kernels(model)``, or one family's ``apply_fused_kernels_to_llama(model)`` and so on.

Built: bias + dropout + residual (BERT, RoBERTa), the scaled masked softmax with dropout (every family, in
eager attention), LayerNorm and GELU (BERT, RoBERTa, GPT-2), RMSNorm, SwiGLU and rotary embeddings (Llama,
Qwen2, Qwen3, Mistral) and the fused linear cross-entropy (GPT-2 and those four). docs/fused-kernels.md.
"""

from __future__ import annotations

import logging

from torch import nn

from effplug.fused.activations import patch_gelu
from effplug.fused.attention import patch_softmax
from effplug.fused.decoders import patch_cross_entropy, patch_rms_norm, patch_swiglu
from effplug.fused.encoders import patch_bias_dropout_residual
from effplug.fused.norms import patch_layer_norm
from effplug.fused.rotary import patch_rope

log = logging.getLogger("effplug.fused")

OPS = ("bias_dropout_residual", "softmax", "layer_norm", "gelu", "rms_norm", "swiglu", "rope", "cross_entropy")
# what each family has of the built ops
FAMILY_OPS = {"bert": ("bias_dropout_residual", "softmax", "layer_norm", "gelu"),
              "roberta": ("bias_dropout_residual", "softmax", "layer_norm", "gelu"),
              "gpt2": ("softmax", "layer_norm", "gelu", "cross_entropy"),
              **{f: ("softmax", "rms_norm", "swiglu", "rope", "cross_entropy")
                 for f in ("llama", "qwen2", "qwen3", "mistral")}}


def apply_fused_kernels(model: nn.Module, bias_dropout_residual: bool | None = None, softmax: bool | None = None,
                        layer_norm: bool | None = None, gelu: bool | None = None, rms_norm: bool | None = None,
                        swiglu: bool | None = None, rope: bool | None = None, cross_entropy: bool | None = None,
                        seed: int | None = None, label_smoothing: float = 0.0, z_loss: float = 0.0,
                        **unsupported) -> nn.Module:
    """Patch ``model``'s modules in place with effplug's fused ops; returns ``model``.

    Each op is ``None`` (patch where the model has it, the default), ``True`` (the model must have it, else
    raise) or ``False`` (leave it). ``seed`` drives the fused dropout; ``label_smoothing`` and ``z_loss`` the
    fused loss. Raises when nothing in the model can be patched, naming the supported families.
    """
    from effplug.options import check_options

    check_options("apply_fused_kernels", unsupported, [*OPS, "seed", "label_smoothing", "z_loss"])
    patches = {"bias_dropout_residual": (bias_dropout_residual, lambda: patch_bias_dropout_residual(model, seed)),
               "softmax": (softmax, lambda: patch_softmax(model, seed)),
               "layer_norm": (layer_norm, lambda: patch_layer_norm(model)),
               "gelu": (gelu, lambda: patch_gelu(model)),
               "rms_norm": (rms_norm, lambda: patch_rms_norm(model)),
               "swiglu": (swiglu, lambda: patch_swiglu(model)),
               "rope": (rope, lambda: patch_rope(model)),
               "cross_entropy": (cross_entropy, lambda: patch_cross_entropy(model, label_smoothing, z_loss))}
    total = 0
    for op, (wanted, patch) in patches.items():
        if wanted is False:
            continue
        patched = patch()
        if wanted and not patched:
            families = [f for f, ops in FAMILY_OPS.items() if op in ops]
            raise ValueError(f"apply_fused_kernels({op}=True) found nothing to patch in {type(model).__name__}; "
                             f"{op} is built for: {', '.join(families)}")
        if patched:
            log.info("effplug.fused: %s fused in %d modules", op, len(patched))
        total += len(patched)
    if not total:
        families = "; ".join(f"{family} ({', '.join(ops)})" for family, ops in FAMILY_OPS.items())
        raise ValueError(f"apply_fused_kernels found nothing to patch in {type(model).__name__}; supported "
                         f"families: {families}")
    return model


def _family_patch(family: str):
    def apply(model: nn.Module, **options) -> nn.Module:
        for op in OPS:
            options.setdefault(op, None if op in FAMILY_OPS[family] else False)
        return apply_fused_kernels(model, **options)

    apply.__name__ = f"apply_fused_kernels_to_{family}"
    apply.__doc__ = f"``apply_fused_kernels`` with the ops built for {family}: {', '.join(FAMILY_OPS[family])}."
    return apply


apply_fused_kernels_to_bert = _family_patch("bert")
apply_fused_kernels_to_roberta = _family_patch("roberta")
apply_fused_kernels_to_gpt2 = _family_patch("gpt2")
apply_fused_kernels_to_llama = _family_patch("llama")
apply_fused_kernels_to_qwen2 = _family_patch("qwen2")
apply_fused_kernels_to_qwen3 = _family_patch("qwen3")
apply_fused_kernels_to_mistral = _family_patch("mistral")
