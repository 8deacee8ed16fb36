"""``model_state_bytes``: the model-state bytes a rank actually holds, in the memory model's buckets."""

from __future__ import annotations

from effplug.sizes import tensor_nbytes


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
