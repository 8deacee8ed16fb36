"""``effplug demo`` rows for gradient communication compression."""

from __future__ import annotations

from effplug.demo import DemoConfig, register_demo_config


def _comm_row(name: str, compressor: str | None, **options) -> DemoConfig:
    """Two spawned CPU processes under DDP; ``compressor=None`` is dense all-reduce through the same meter."""

    def trainer_kwargs():
        from effplug.comm import GradientCompressor
        from effplug.lit_modules import CommBytesCallback
        from effplug.strategies import CompressedDDPStrategy

        chosen = GradientCompressor() if compressor is None else compressor
        strategy = CompressedDDPStrategy(chosen, start_method="spawn", **options)
        return {"strategy": strategy, "callbacks": [CommBytesCallback()]}

    return DemoConfig(name, trainer_kwargs, tasks=("digits-resnet",), devices=2, baseline=compressor is None)


# Digits only, 2 processes each (per-rank batch 64, so each step sees 128 samples); bytes are what one rank
# sends per step next to dense all-reduce. benchmarks/comm.py covers GPT-2, 4 processes and 3 seeds.
register_demo_config(_comm_row("DDP dense, 2 procs", None))
register_demo_config(_comm_row("ddp_topk 1%, 2 procs", "topk", ratio=0.01))
register_demo_config(_comm_row("ddp_cgx 4-bit, 2 procs", "cgx", bits=4, seed=0))
register_demo_config(_comm_row("ddp_dither 7 levels, 2 procs", "dither", seed=0))
