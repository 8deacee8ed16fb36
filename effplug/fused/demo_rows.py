"""``effplug demo`` row for the fused transformer ops (docs/fused-kernels.md)."""

from __future__ import annotations

from effplug.demo import DemoConfig, register_demo_config


def _fused_row() -> DemoConfig:
    def trainer_kwargs():
        from effplug.callbacks import FusedKernels

        # the demo's GPT-2 uses sdpa (already one kernel) and computes its loss from the logits itself, so
        # LayerNorm and GELU are the ops it has to fuse
        return {"callbacks": [FusedKernels(layer_norm=True, gelu=True, softmax=False, cross_entropy=False)]}

    return DemoConfig("fused LayerNorm + GELU", trainer_kwargs, tasks=("char-gpt2",))


register_demo_config(_fused_row())
