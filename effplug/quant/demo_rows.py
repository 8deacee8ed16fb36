"""``effplug demo`` rows for quantization-aware and low-precision training."""

from __future__ import annotations

from effplug.demo import DemoConfig, register_demo_config


def _qat_row(name: str, tasks: tuple = (), **settings) -> DemoConfig:
    """A row for ``effplug.callbacks.QuantizationAwareTraining`` (first and last layers at 8 bits)."""

    def trainer_kwargs():
        from effplug.callbacks import QuantizationAwareTraining

        return {"callbacks": [QuantizationAwareTraining(**settings)]}

    return DemoConfig(name, trainer_kwargs, tasks=tasks)


register_demo_config(_qat_row("lsq W4A4 QAT", weight_bits=4, act_bits=4, weight_estimator="lsq", act_estimator="lsq"))
register_demo_config(_qat_row("octav W4A4 QAT", tasks=("digits-resnet",), weight_bits=4, act_bits=4,
                              weight_estimator="octav", act_estimator="octav"))
# per-layer weight bits (HAWQ trace x MSE) at a 4-bit average, searched on 2 training batches at fit start;
# the demo trains from scratch, so this shows the door, not the gain (benchmarks/qat.py --suite auto)
register_demo_config(_qat_row("auto bits, avg W4 A8 QAT", bits="auto", budget_bits=4.0, act_bits=8))


def _luq_row() -> DemoConfig:
    def trainer_kwargs():
        from effplug.precision import LUQPrecision

        return {"plugins": [LUQPrecision()]}

    return DemoConfig("LUQ 4-bit fwd+bwd", trainer_kwargs, tasks=("digits-resnet",))


def _lns_madam_row() -> DemoConfig:
    def trainer_kwargs():
        import pytorch_lightning as pl

        from effplug.optim import LNSMadam
        from effplug.precision import LNSPrecision

        class UseLNSMadam(pl.Callback):  # the demo modules build their optimizer from these attributes
            def setup(self, trainer, pl_module, stage):
                super().setup(trainer, pl_module, stage)
                pl_module.optimizer_class, pl_module.lr = LNSMadam, 1 / 8

        return {"plugins": [LNSPrecision()], "callbacks": [UseLNSMadam()]}

    return DemoConfig("LNS-Madam 8-bit", trainer_kwargs, tasks=("digits-resnet",))


# Digits only: on this CPU the torch path of LUQ's gradient quantizer makes GPT-2 several times slower;
# benchmarks/lowprec.py covers the transformer.
register_demo_config(_luq_row())
register_demo_config(_lns_madam_row())
