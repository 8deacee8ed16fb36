"""ZeRO checkpoint folders: one plain state dict from any stage and world size, and ``weights_only`` loading."""

from __future__ import annotations


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
