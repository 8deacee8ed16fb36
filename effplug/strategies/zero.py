"""ZeRO strategies that also run on CPU: DeepSpeed stages 1/2/3 (``zero1``...``zero3_offload``) and FSDP2.

Lightning's ``DeepSpeedStrategy`` refuses anything but CUDA (it raised rather than crash, Lightning #12607).
DeepSpeed itself runs on CPU with its CPU accelerator and gloo; three things in Lightning stand in the way,
and ``ZeroStrategy`` lifts exactly those on CPU and changes nothing on CUDA:

1. ``setup_environment``: the CUDA-only guard;
2. ``setup_distributed``: the device-index check (a CPU device has no index);
3. ``deepspeed.initialize(args=Namespace(device_rank=root_device.index))``: None on CPU, which DeepSpeed
   compares with ``>=``; the local rank is passed instead.

``FSDP2Strategy`` is torch's ``fully_shard`` through Lightning's ``ModelParallelStrategy`` (FSDP1 cannot run
on CPU). A module without its own ``configure_model`` is sharded layer by layer automatically.
"""

from __future__ import annotations

import argparse
import contextlib
from typing import Any

import torch

from effplug._optional import require
from effplug.options import checks_keywords
from effplug.parallel.fsdp import shard_by_layer
from effplug.parallel.zero import deepspeed_config, deepspeed_safe_globals

require("pytorch_lightning", extra="lightning")

from pytorch_lightning.strategies import DDPStrategy, DeepSpeedStrategy, ModelParallelStrategy  # noqa: E402


class ZeroStrategy(DeepSpeedStrategy):
    """DeepSpeed ZeRO ``stage`` built from ``effplug.parallel.zero.deepspeed_config``, on CUDA or CPU.

    ``ZeroStrategy(stage=2)``, ``ZeroStrategy(stage=3, offload="all", param_persistence_threshold=0)``, or
    ``ZeroStrategy(config=<a full DeepSpeed dict>)``. Keyword options of ``deepspeed_config`` go to it; the
    rest go to Lightning's ``DeepSpeedStrategy``. Needs ``pip install 'effplug[deepspeed]'``.

    Building one registers the DeepSpeed classes its optimizer shards pickle as torch safe globals, so
    ``torch.load(shard, weights_only=True)`` reads them (``effplug.parallel.zero.load_zero_file`` does it
    for one load without registering anything).
    """

    strategy_name = "zero"

    def __init__(self, stage: int = 2, offload: str | None = None, config: dict | None = None, *,
                 param_persistence_threshold: int | None = None, reduce_bucket_size: int | None = None,
                 quantized_weights: bool = False, hierarchical_partition_size: int | None = None,
                 quantized_gradients: bool = False, gradient_clipping: float | None = None, **options: Any):
        require("deepspeed", extra="deepspeed")
        import inspect

        # typed ZeRO options (LightningCLI's init_args need names in the signature); None/False: the default
        typed = dict(param_persistence_threshold=param_persistence_threshold, reduce_bucket_size=reduce_bucket_size,
                     hierarchical_partition_size=hierarchical_partition_size, gradient_clipping=gradient_clipping)
        options = {**{k: v for k, v in typed.items() if v is not None}, **options}
        options.update({k: True for k, v in (("quantized_weights", quantized_weights),
                                             ("quantized_gradients", quantized_gradients)) if v})

        torch.serialization.add_safe_globals(deepspeed_safe_globals())

        accepted = set(inspect.signature(deepspeed_config).parameters) - {"stage", "offload"}
        zero_kwargs = {k: options.pop(k) for k in list(options) if k in accepted}
        if config is None:
            config = deepspeed_config(stage, offload, **zero_kwargs)
            # Lightning owns these (accumulate_grad_batches, the loader's batch size) and refuses them in the config
            del config["gradient_accumulation_steps"], config["train_micro_batch_size_per_gpu"]
        elif zero_kwargs:
            raise ValueError(f"pass either config= or ZeRO options, not both (got {sorted(zero_kwargs)})")
        if not isinstance(config, dict) or not isinstance(config.get("zero_optimization"), dict) \
                or "stage" not in config["zero_optimization"]:
            raise ValueError("ZeroStrategy(config=...) needs a DeepSpeed config dict with a 'zero_optimization' "
                             "section that sets 'stage'; build one with effplug.parallel.zero.deepspeed_config(stage) "
                             "or pass ZeroStrategy(stage=2) instead")
        self.stage = config["zero_optimization"]["stage"]
        super().__init__(config=config, **options)

    def _on_cpu(self) -> bool:
        return self.root_device.type == "cpu"

    def setup_environment(self) -> None:
        from pytorch_lightning.plugins.precision import DeepSpeedPrecision

        if not isinstance(self.precision_plugin, DeepSpeedPrecision):
            # DeepSpeed's engine runs the optimizer step; another precision plugin's step skips its bookkeeping and
            # fails deep inside ZeRO (KeyError: 0)
            raise ValueError(
                f"{type(self.precision_plugin).__name__} cannot run under a ZeRO strategy: DeepSpeed owns the optimizer "
                "step and needs its own precision plugin. Drop plugins=[...] and convert the model in the "
                "LightningModule instead (effplug.quant.luq.prepare_luq(self.model) or effplug.quant.lns.prepare_lns "
                "in __init__), with precision='32-true' or 'bf16-mixed' on the Trainer")
        if self._on_cpu():
            DDPStrategy.setup_environment(self)  # skips DeepSpeedStrategy's CUDA-only guard
        else:
            super().setup_environment()

    def setup_distributed(self) -> None:
        if not self._on_cpu():
            return super().setup_distributed()
        from lightning_fabric.utilities.seed import reset_seed

        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()  # gloo through DeepSpeed's CPU accelerator
        return None

    @contextlib.contextmanager
    def _device_rank_for_deepspeed(self):
        """DeepSpeed reads ``args.device_rank``; Lightning passes ``root_device.index``, None on CPU."""
        if not self._on_cpu():
            yield
            return
        import deepspeed

        original = deepspeed.initialize

        def initialize(*args, **kwargs):
            kwargs["args"] = argparse.Namespace(device_rank=self.local_rank)
            return original(*args, **kwargs)

        deepspeed.initialize = initialize
        try:
            yield
        finally:
            deepspeed.initialize = original

    def _setup_model_and_optimizer(self, model, optimizer, lr_scheduler=None):
        with self._device_rank_for_deepspeed():
            return super()._setup_model_and_optimizer(model, optimizer, lr_scheduler)

    def _initialize_deepspeed_inference(self, model) -> None:
        with self._device_rank_for_deepspeed():
            return super()._initialize_deepspeed_inference(model)

    @classmethod
    def register_strategies(cls, strategy_registry) -> None:
        for name, (stage, offload, description) in ZERO_NAMES.items():
            if name not in strategy_registry:
                strategy_registry.register(name, cls, description=description, stage=stage, offload=offload)


ZERO_NAMES = {
    "zero1": (1, None, "DeepSpeed ZeRO-1 (optimizer states partitioned), CPU or CUDA (effplug)"),
    "zero2": (2, None, "DeepSpeed ZeRO-2 (optimizer states and gradients partitioned), CPU or CUDA (effplug)"),
    "zero3": (3, None, "DeepSpeed ZeRO-3 (parameters too), CPU or CUDA (effplug)"),
    "zero3_offload": (3, "all", "DeepSpeed ZeRO-3 with parameters and optimizer offloaded to CPU (effplug)"),
}


@checks_keywords(also_from=ModelParallelStrategy.__init__)
class FSDP2Strategy(ModelParallelStrategy):
    """FSDP2 (``torch.distributed.fsdp.fully_shard``) over all ranks, as a drop-in strategy: ``"fsdp2"``.

    If the LightningModule defines ``configure_model`` it is used as is (Lightning's contract). Otherwise every
    module that directly owns parameters is sharded with ``fully_shard`` over the data-parallel mesh, then the
    root, so each rank holds 1/N of every parameter, gradient and optimizer state (ZeRO-3-like). Models with
    tied weights in different modules (GPT-2's embedding and head) need their own ``configure_model``.
    """

    strategy_name = "fsdp2"

    def __init__(self, **kwargs: Any):
        kwargs.setdefault("data_parallel_size", "auto")
        kwargs.setdefault("tensor_parallel_size", 1)
        super().__init__(**kwargs)

    def setup_environment(self) -> None:
        if self._data_parallel_size == "auto":  # every rank is data-parallel (Lightning's "auto" means nodes)
            tensor_parallel = 1 if self._tensor_parallel_size == "auto" else self._tensor_parallel_size
            self._data_parallel_size = self.world_size // tensor_parallel
            self._tensor_parallel_size = tensor_parallel
        super().setup_environment()

    def setup(self, trainer) -> None:
        from pytorch_lightning.utilities.model_helpers import is_overridden

        module = self.lightning_module
        if not is_overridden("configure_model", module):
            shard_by_layer(module, self.device_mesh["data_parallel"])
            # Lightning insists on a configure_model; the sharding above is what it would have done
            module.configure_model = lambda: None
        super().setup(trainer)

    @classmethod
    def register_strategies(cls, strategy_registry) -> None:
        if "fsdp2" not in strategy_registry:
            strategy_registry.register("fsdp2", cls, description="FSDP2 fully_shard per layer, CPU or CUDA (effplug)")
