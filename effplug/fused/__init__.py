"""Fused transformer ops patched into instantiated models, one patch function per model family (Liger-Kernel's
``apply_liger_kernel_to_*`` shape). ``apply_fused_kernels(model, bias_dropout_residual=True)``.

Implemented so far: bias + dropout + residual (``effplug.kernels.bias_dropout_residual``) in BERT and RoBERTa's
``*SelfOutput``/``*Output`` blocks. The other ops of the fused-kernels issue (norms, softmax, GELU/SwiGLU, fused
linear cross-entropy, rotary) and the decoder families are not built yet: asking for them raises an error that
says so.
"""

from __future__ import annotations

import logging
import types

from torch import nn
from torch.nn import functional as F

from effplug.kernels.bias_dropout_residual import FusedBiasDropoutResidual

log = logging.getLogger("effplug.fused")

# class names of the blocks ``dense -> dropout -> LayerNorm(x + residual)``, per family
BIAS_DROPOUT_RESIDUAL_BLOCKS = {"bert": ("BertSelfOutput", "BertOutput"),
                                "roberta": ("RobertaSelfOutput", "RobertaOutput")}
NOT_YET = ("layer_norm", "rms_norm", "swiglu", "cross_entropy", "rope", "softmax", "gelu")


def _fused_output_forward(self, hidden_states, input_tensor):
    dense = self.dense
    if type(dense) is nn.Linear and dense.bias is not None:  # fold the bias into the fused pass
        hidden_states, bias = F.linear(hidden_states, dense.weight), dense.bias
    else:  # a QAT or otherwise wrapped layer keeps its own forward; dropout and residual stay fused
        hidden_states, bias = dense(hidden_states), None
    return self.LayerNorm(self.fused_bias_dropout_residual(hidden_states, bias, input_tensor))


def patch_bias_dropout_residual(model: nn.Module, seed: int | None = None) -> list[str]:
    """Replace BERT/RoBERTa output blocks' ``dropout(dense(x)) + residual`` with the fused op; returns the
    patched module names."""
    names = {n for family in BIAS_DROPOUT_RESIDUAL_BLOCKS.values() for n in family}
    patched = []
    for name, module in model.named_modules():
        if type(module).__name__ not in names or hasattr(module, "fused_bias_dropout_residual"):
            continue
        if not all(hasattr(module, a) for a in ("dense", "dropout", "LayerNorm")):
            continue
        module.fused_bias_dropout_residual = FusedBiasDropoutResidual(module.dropout.p, seed)
        module.forward = types.MethodType(_fused_output_forward, module)
        patched.append(name)
    return patched


def apply_fused_kernels(model: nn.Module, bias_dropout_residual: bool = True, seed: int | None = None,
                        **unsupported) -> nn.Module:
    """Patch ``model``'s modules in place with effplug's fused ops; returns ``model``.

    Raises when nothing in the model can be patched, naming the supported families, and when an op that is
    not built yet is asked for.
    """
    asked = [k for k, v in unsupported.items() if v]
    unknown = [k for k in unsupported if k not in NOT_YET]
    if unknown:
        from effplug.options import check_options

        check_options("apply_fused_kernels", unknown, ["bias_dropout_residual", "seed", *NOT_YET])
    if asked:
        raise NotImplementedError(f"apply_fused_kernels: {', '.join(asked)} are not built yet; only "
                                  "bias_dropout_residual is (docs/fused-kernels.md)")
    if bias_dropout_residual:
        patched = patch_bias_dropout_residual(model, seed)
        if not patched:
            families = ", ".join(f"{f} ({'/'.join(c)})" for f, c in BIAS_DROPOUT_RESIDUAL_BLOCKS.items())
            raise ValueError(f"apply_fused_kernels(bias_dropout_residual=True) found no block to patch in "
                             f"{type(model).__name__}; supported: {families}")
        log.info("effplug.fused: bias + dropout + residual fused in %d blocks", len(patched))
    return model
