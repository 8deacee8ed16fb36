"""``effplug demo`` rows for compressed activations."""

from __future__ import annotations

from effplug.demo import DemoConfig, register_demo_config


def _activation_compression_row(name: str, tasks: tuple = (), **settings) -> DemoConfig:
    """A row for ``effplug.callbacks.ActivationCompression``; saved bytes come from the engine's own accounting."""

    def trainer_kwargs():
        from effplug.callbacks import ActivationCompression

        return {"callbacks": [ActivationCompression(**settings, seed=0)]}

    def measure(module, batch) -> int:
        from effplug.compress import ActivationCompressor

        module.train()
        engine = ActivationCompressor(module, **settings, seed=0)
        return engine.step_saved_bytes(lambda: module.compute_loss(batch))[1]

    return DemoConfig(name, trainer_kwargs, tasks=tasks, measure_saved_bytes=measure)


# Digits only: the torch codec's stochastic rounding makes the GPT-2 row ~8x slower on a CPU, which would
# push `make demo` past its few-minute budget. benchmarks/activation_memory.py covers the transformer.
register_demo_config(
    _activation_compression_row("actnn 4-bit activations", tasks=("digits-resnet",), method="actnn", bits=4)
)
