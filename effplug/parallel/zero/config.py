"""``deepspeed_config``: a validated DeepSpeed config dict for ZeRO stages 0-3, offload and ZeRO++, on CPU or CUDA."""

from __future__ import annotations

STAGES = (0, 1, 2, 3)
OFFLOAD_CHOICES = (None, "optimizer", "all")


def check_stage(stage) -> None:
    if stage not in STAGES:
        raise ValueError(f"ZeRO stage={stage!r} is not one of 0, 1, 2, 3 (0 = plain data parallelism)")


def deepspeed_config(stage: int = 2, offload: str | None = None, *, device: str = "auto",
                     micro_batch_size: int | str = "auto", gradient_accumulation_steps: int | str = "auto",
                     precision: str = "fp32", param_persistence_threshold: int | None = None,
                     reduce_bucket_size: int | None = None, quantized_weights: bool = False,
                     hierarchical_partition_size: int | None = None, quantized_gradients: bool = False,
                     gradient_clipping: float | None = None) -> dict:
    """A valid DeepSpeed config for ZeRO ``stage`` (the ``zero_optimization`` section plus what it needs).

    - ``offload``: ``"optimizer"`` (optimizer states and their step on the CPU; stages 1-3) or ``"all"``
      (parameters too; stage 3 only).
    - ``device``: ``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA if torch sees a GPU). Decides which ZeRO++ flags
      are allowed: qwZ (``quantized_weights``) and qgZ (``quantized_gradients``) have no CPU kernels in
      DeepSpeed and raise here, not deep inside the first step.
    - ``hierarchical_partition_size`` (hpZ): a secondary copy of stage-3 parameters inside groups of this
      many ranks (usually the GPUs of one node); runs on CPU.
    - ``param_persistence_threshold``: stage-3 parameters smaller than this stay whole on every rank
      (DeepSpeed's default 1e5 keeps *every* tensor of a small model whole; 0 partitions everything).
    - ``micro_batch_size`` / ``gradient_accumulation_steps``: ``"auto"`` lets the HF Trainer fill them in;
      Lightning sets the micro batch itself.
    - ``precision``: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (fp16 adds dynamic loss scaling).
    """
    check_stage(stage)
    if offload not in OFFLOAD_CHOICES:
        raise ValueError(f"offload={offload!r}: use None, 'optimizer' or 'all' (parameters too, stage 3)")
    if offload and stage == 0:
        raise ValueError("offload needs ZeRO stage 1, 2 or 3 (it moves partitioned optimizer states)")
    if offload == "all" and stage != 3:
        raise ValueError(f"offload='all' moves partitioned parameters and needs stage 3, not {stage}; "
                         "use offload='optimizer' for stages 1 and 2")
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision={precision!r}: use 'fp32', 'bf16' or 'fp16'")
    device = _resolve_device(device)
    zero_plus_plus = {"quantized_weights (qwZ)": quantized_weights, "quantized_gradients (qgZ)": quantized_gradients,
                      "hierarchical_partition_size (hpZ)": hierarchical_partition_size}
    used = [name for name, value in zero_plus_plus.items() if value]
    if used and stage != 3:
        raise ValueError(f"ZeRO++ {', '.join(used)} needs stage 3, not {stage}")
    if device == "cpu" and (quantized_weights or quantized_gradients):
        raise ValueError("ZeRO++ quantized_weights (qwZ) and quantized_gradients (qgZ) have no CPU kernels in "
                         "DeepSpeed ('This op had not been implemented on CPU backend'); run them on CUDA, or "
                         "drop them on CPU (hierarchical_partition_size, hpZ, does run on CPU)")
    if device == "cpu" and precision == "fp16":
        raise ValueError("precision='fp16' needs CUDA (DeepSpeed's fp16 optimizer and loss scaler); use 'fp32' "
                         "or 'bf16' on CPU")

    zero: dict = {"stage": stage}
    if stage >= 1:
        zero.update(contiguous_gradients=True, overlap_comm=device == "cuda")
    if reduce_bucket_size is not None:
        zero["reduce_bucket_size"] = int(reduce_bucket_size)
    if stage == 3 and param_persistence_threshold is not None:
        zero["stage3_param_persistence_threshold"] = int(param_persistence_threshold)
    if offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": device == "cuda"}
    if offload == "all":
        zero["offload_param"] = {"device": "cpu", "pin_memory": device == "cuda"}
    if quantized_weights:
        zero["zero_quantized_weights"] = True
    if quantized_gradients:
        zero["zero_quantized_gradients"] = True
    if hierarchical_partition_size:
        zero["zero_hpz_partition_size"] = int(hierarchical_partition_size)

    config = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": gradient_accumulation_steps,
        "zero_optimization": zero,
        # a torch optimizer (Lightning's configure_optimizers, the HF Trainer's AdamW) is fine with ZeRO
        "zero_allow_untested_optimizer": True,
        # offload normally insists on DeepSpeedCPUAdam, a compiled op; a torch optimizer works too
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    if precision == "bf16":
        config["bf16"] = {"enabled": True}
    elif precision == "fp16":
        config["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
    if gradient_clipping is not None:
        config["gradient_clipping"] = float(gradient_clipping)
    return config


def _resolve_device(device: str) -> str:
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r}: use 'cpu', 'cuda' or 'auto'")
    return device
