"""The ZeRO paper's memory model (``estimate_memory``) and the planner behind ``effplug plan``.

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

from effplug.parallel.zero.config import check_stage


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
    check_stage(stage)
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
