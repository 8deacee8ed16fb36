"""ZeRO by configuration: a DeepSpeed config builder, the ZeRO paper's memory model and a planner.

``deepspeed_config(stage, ...)`` returns a plain dict for ``deepspeed.initialize``, Lightning's DeepSpeed
strategies (``effplug.strategies`` names ``zero1``/``zero2``/``zero3``/``zero3_offload``) and
``transformers.TrainingArguments(deepspeed=...)``. ``estimate_memory`` implements the model-state formulas of
Rajbhandari et al., "ZeRO: Memory Optimizations Toward Training Trillion Parameter Models" (SC'20), Sec. 5.1 /
Fig. 1, with Ψ parameters, N data-parallel ranks and K bytes of optimizer state per parameter:

    stage 0 (DDP):  (2 + 2 + K) Ψ            = 16Ψ for mixed-precision Adam (K = 12)
    stage 1 (P_os): (2 + 2) Ψ + K Ψ / N       = 4Ψ + 12Ψ/N
    stage 2 (+g):   2Ψ + (2 + K) Ψ / N        = 2Ψ + 14Ψ/N
    stage 3 (+p):   (2 + 2 + K) Ψ / N         = 16Ψ/N

The 2-byte parameter and gradient terms are ``param_bytes`` / ``grad_bytes``; fp32 training is 4 / 4 / 12
(DeepSpeed keeps an fp32 master partition next to Adam's two moments either way).
"""

from __future__ import annotations

from dataclasses import dataclass

from effplug.sizes import tensor_nbytes

STAGES = (0, 1, 2, 3)
OFFLOAD_CHOICES = (None, "optimizer", "all")


def _check_stage(stage) -> None:
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
    _check_stage(stage)
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


@dataclass(frozen=True)
class MemoryEstimate:
    """Per-rank bytes of model states (and activations when a sample batch was measured)."""

    stage: int
    world_size: int
    param_bytes: float
    grad_bytes: float
    optimizer_bytes: float
    offloaded_bytes: float = 0.0  # moved to CPU memory by offload (not in the device total)
    activation_bytes: float = 0.0

    @property
    def model_state_bytes(self) -> float:
        return self.param_bytes + self.grad_bytes + self.optimizer_bytes

    @property
    def total_bytes(self) -> float:
        return self.model_state_bytes + self.activation_bytes


def estimate_memory(num_params: float, world_size: int, stage: int, *, param_bytes: int = 2, grad_bytes: int = 2,
                    optimizer_bytes: int = 12, offload: str | None = None, model=None,
                    sample_batch=None, loss_fn=None) -> MemoryEstimate:
    """Per-rank model-state bytes for ZeRO ``stage`` on ``world_size`` ranks (the ZeRO paper's formulas).

    Defaults are mixed-precision Adam (2 + 2 + 12 bytes per parameter); pass 4, 4, 12 for fp32 training.
    ``offload="optimizer"`` moves the optimizer and gradient partitions (ZeRO-Offload steps on the CPU, and
    DeepSpeed reduces gradients into CPU memory), ``"all"`` also the parameter partition, to CPU memory
    (reported as ``offloaded_bytes``). With ``model`` and ``sample_batch`` the activation bytes of one
    forward (``loss_fn(model, batch)`` or ``model(batch)``) come from ``effplug.profile.saved_bytes``; they
    are per micro-batch and not divided by ZeRO.
    """
    _check_stage(stage)
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size={world_size!r}: use a positive int")
    if isinstance(num_params, bool) or not isinstance(num_params, (int, float)) or not num_params > 0 \
            or num_params == float("inf"):
        raise ValueError(f"num_params={num_params!r}: use a positive finite parameter count, e.g. 7e9")
    if offload not in (None, "optimizer", "all"):
        raise ValueError(f"offload={offload!r}: use None, 'optimizer' or 'all' (parameters too, stage 3)")
    psi, n = float(num_params), world_size
    params = param_bytes * psi / (n if stage >= 3 else 1)
    grads = grad_bytes * psi / (n if stage >= 2 else 1)
    optimizer = optimizer_bytes * psi / (n if stage >= 1 else 1)
    offloaded = 0.0
    if offload in ("optimizer", "all"):
        # ZeRO-Offload steps on the CPU: the gradient partition is reduced into CPU memory with the states
        offloaded += optimizer + grads
        optimizer = grads = 0.0
    if offload == "all":
        offloaded += params
        params = 0.0
    activations = 0.0
    if model is not None and sample_batch is not None:
        from effplug.profile import saved_bytes

        run = (lambda: loss_fn(model, sample_batch)) if loss_fn else (lambda: model(sample_batch))
        activations = float(saved_bytes(run, parameters=model).activation_bytes)
    return MemoryEstimate(stage, world_size, params, grads, optimizer, offloaded, activations)


STRATEGY_FOR_STAGE = {0: "ddp", 1: "zero1", 2: "zero2", 3: "zero3"}


def plan(num_params: float, gpus: int, gpu_mem_gb: float, *, param_bytes: int = 2, grad_bytes: int = 2,
         optimizer_bytes: int = 12, headroom: float = 0.9) -> list[dict]:
    """Per stage (and stage 3 with offload): per-rank GiB, whether it fits, and the recommended strategy.

    A configuration fits when its device bytes are at most ``headroom`` of ``gpu_mem_gb`` (the rest is for
    activations, buffers and fragmentation). The recommendation is the lowest stage that fits (less
    communication: stages 1-2 move 2Ψ per step like DDP, stage 3 moves 3Ψ); ``zero3_offload`` if only
    offload fits.
    """
    import math

    checks = {"num_params": (num_params, "a positive finite parameter count, e.g. 7e9"),
              "gpu_mem_gb": (gpu_mem_gb, "positive finite GiB per GPU, e.g. 80"),
              "headroom": (headroom, "a fraction in (0, 1], e.g. 0.9")}
    for name, (value, allowed) in checks.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name}={value!r} is not valid; use {allowed}")
    if headroom > 1:
        raise ValueError(f"headroom={headroom!r} is above 1: model states cannot use more than the GPU's memory; "
                         "use a fraction in (0, 1], e.g. 0.9")
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
        raise ValueError(f"gpus={gpus!r}: gpus must be >= 1 (an integer count of data-parallel ranks)")
    for name, value in (("param_bytes", param_bytes), ("grad_bytes", grad_bytes), ("optimizer_bytes", optimizer_bytes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name}={value!r} is not valid; use a non-negative integer of bytes per parameter")
    budget = headroom * gpu_mem_gb * 2**30
    rows = []
    for name, stage, offload in [("ddp", 0, None), ("zero1", 1, None), ("zero2", 2, None), ("zero3", 3, None),
                                 ("zero3_offload", 3, "all")]:
        est = estimate_memory(num_params, gpus, stage, param_bytes=param_bytes, grad_bytes=grad_bytes,
                              optimizer_bytes=optimizer_bytes, offload=offload)
        rows.append({"strategy": name, "stage": stage, "offload": offload, "per_rank_gib": est.model_state_bytes / 2**30,
                     "offloaded_gib": est.offloaded_bytes / 2**30, "fits": est.model_state_bytes <= budget,
                     "recommended": False})
    for row in rows:
        if row["fits"]:
            row["recommended"] = True
            break
    return rows


def format_plan(rows: list[dict], num_params: float, gpus: int, gpu_mem_gb: float) -> str:
    lines = [f"model states for {num_params:,.0f} parameters on {gpus} GPUs with {gpu_mem_gb:g} GiB each "
             "(mixed-precision Adam: 2 + 2 + 12 bytes/param; activations not included)", "",
             "| strategy | ZeRO stage | per-rank GiB | offloaded to CPU GiB | fits | |", "|---|---|---|---|---|---|"]
    for r in rows:
        mark = "recommended" if r["recommended"] else ""
        lines.append(f"| {r['strategy']} | {r['stage']} | {r['per_rank_gib']:.1f} | {r['offloaded_gib']:.1f} | "
                     f"{'yes' if r['fits'] else 'no'} | {mark} |")
    if not any(r["recommended"] for r in rows):
        lines.append("\nnothing fits: add GPUs, or combine with activation checkpointing and tensor/pipeline parallelism")
    return "\n".join(lines)


def _tensors(obj):
    if isinstance(obj, dict):
        obj = list(obj.values())
    for item in obj or []:
        if isinstance(item, (list, tuple, dict)):
            yield from _tensors(item)
        elif hasattr(item, "numel"):
            yield item


def _offloads(offload_config) -> bool:
    device = getattr(offload_config, "device", "none")
    return offload_config is not None and str(getattr(device, "value", device)) != "none"


def model_state_bytes(model, optimizer=None) -> dict:
    """Bytes of model states this rank holds: parameters, gradients, optimizer states (with master copies).

    ``model`` is a ``deepspeed.DeepSpeedEngine`` (its ZeRO optimizer is read directly) or an FSDP2/plain module
    with its ``optimizer``. Call it after backward and before the optimizer step: DeepSpeed then holds this
    rank's partition of the reduced gradients, ready for its step.

    The buckets match :func:`estimate_memory`'s: under DeepSpeed offload, the optimizer and gradient
    partitions (and with ``offload_param`` the parameter partition) are counted in ``offloaded``.
    The engine's config decides, not the tensors' device, so a CPU-only run reports the same buckets as a
    GPU run.
    """
    zero_optimizer = getattr(model, "optimizer", None) if hasattr(model, "module") and hasattr(model, "zero_optimization_stage") else None
    if zero_optimizer is not None:
        module = model.module
        # ZeRO-3 keeps small parameters (under param_persistence_threshold) gathered for good: ds_persist ones
        # hold their full tensor next to their partition
        partitions = sum(tensor_nbytes(p.ds_tensor) for p in module.parameters() if hasattr(p, "ds_tensor"))
        whole = sum(tensor_nbytes(p.data) if getattr(p, "ds_persist", False) else 0 if hasattr(p, "ds_tensor")
                    else tensor_nbytes(p) for p in module.parameters())
        grads = sum(tensor_nbytes(t) for t in _tensors(getattr(zero_optimizer, "averaged_gradients", None)))
        grads += sum(tensor_nbytes(p.grad) for p in module.parameters())
        offloads_optimizer = _offloads(model.zero_offload_optimizer())
        if offloads_optimizer and not grads:
            # offloaded, gradients are reduced straight into the optimizer's CPU buffers: stage 3 keeps one
            # flat partition buffer, stages 1-2 the master partitions' .grad
            flat = getattr(zero_optimizer, "grad_partitions_flat_buffer", None)
            grads = tensor_nbytes(flat) if flat is not None else sum(
                tensor_nbytes(t.grad) for t in _tensors(getattr(zero_optimizer, "single_partition_of_fp32_groups", None))
                if t.grad is not None)
        masters = getattr(zero_optimizer, "single_partition_of_fp32_groups", None)
        if masters is None:
            masters = getattr(zero_optimizer, "fp32_partitioned_groups_flat", None)
        inner = getattr(zero_optimizer, "optimizer", zero_optimizer)
        optimizer_bytes = sum(tensor_nbytes(t) for t in _tensors(masters))
        optimizer_bytes += sum(tensor_nbytes(v) for s in inner.state.values() for v in s.values()
                               if hasattr(v, "numel") and v.dim() > 0)
        offloaded = 0
        if offloads_optimizer:
            offloaded, optimizer_bytes, grads = optimizer_bytes + grads, 0, 0
        if _offloads(model.zero_offload_param()):
            offloaded, partitions = offloaded + partitions, 0
        return {"params": partitions + whole, "grads": grads, "optimizer": optimizer_bytes, "offloaded": offloaded}
    params = sum(tensor_nbytes(p) for p in model.parameters())
    grads = sum(tensor_nbytes(p.grad) for p in model.parameters())
    optimizer_bytes = 0 if optimizer is None else sum(
        tensor_nbytes(v) for s in optimizer.state.values() for v in s.values() if hasattr(v, "numel") and v.dim() > 0)
    return {"params": params, "grads": grads, "optimizer": optimizer_bytes, "offloaded": 0}


def plain_state_dict(checkpoint_dir: str, tag: str | None = None) -> dict:
    """A ZeRO checkpoint folder (any stage, any world size) as one plain fp32 ``{name: tensor}`` state dict.

    Lightning's DeepSpeed checkpoints keep the model under ``tag="checkpoint"`` (found automatically) and
    prefix names with the LightningModule's attribute path; HF's and raw DeepSpeed's use ``global_step<N>``.
    """
    from pathlib import Path

    from effplug._optional import require

    require("deepspeed", extra="deepspeed")
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    folder = Path(checkpoint_dir)
    if tag is None and not (folder / "latest").exists() and (folder / "checkpoint").is_dir():
        tag = "checkpoint"  # Lightning's layout
    state = get_fp32_state_dict_from_zero_checkpoint(str(folder), tag=tag)
    return {k: v for k, v in state.items()}


def deepspeed_safe_globals() -> list:
    """The DeepSpeed classes a ZeRO optimizer shard pickles (loss scaler, stage enum, fragment addresses).

    ``torch.load(weights_only=True)`` refuses them by default ("Unsupported global: ...LossScaler");
    ``effplug.strategies`` registers them with ``torch.serialization.add_safe_globals`` on import, and
    :func:`load_zero_file` allows them for one load only.
    """
    from effplug._optional import require

    require("deepspeed", extra="deepspeed")
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def load_zero_file(path: str) -> dict:
    """One file of a ZeRO checkpoint folder (model states or an optimizer shard), with ``weights_only=True``."""
    import torch

    # only what is not registered yet: leaving the context removes its globals, registered ones included
    registered = torch.serialization.get_safe_globals()
    with torch.serialization.safe_globals([g for g in deepspeed_safe_globals() if g not in registered]):
        return torch.load(path, weights_only=True, map_location="cpu")
