"""Plugin state in checkpoints: a checksum verified on load, and a refusal to resume under other settings.

Neither Lightning nor DeepSpeed notices flipped bytes in a checkpoint: a corrupted file resumes silently.
Every effplug door stores its state through :func:`seal` and reads it through :func:`unseal`, which
recompute a CRC-32 over every tensor's bytes and every plain value and refuse a mismatch.
"""

from __future__ import annotations

import zlib

import torch

CHECKSUM_KEY = "effplug_crc32"


def _feed(crc: int, value) -> int:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        crc = zlib.crc32(f"{t.dtype}{tuple(t.shape)}".encode(), crc)
        return zlib.crc32(t.reshape(-1).view(torch.uint8).numpy().tobytes(), crc) if t.numel() else crc
    if isinstance(value, dict):
        for key in sorted(value, key=str):
            crc = _feed(zlib.crc32(repr(key).encode(), crc), value[key])
        return crc
    if isinstance(value, (list, tuple)):
        for item in value:
            crc = _feed(crc, item)
        return zlib.crc32(b"]", crc)
    return zlib.crc32(repr(value).encode(), crc)


def checksum(state) -> int:
    """CRC-32 of nested dicts/lists of tensors and plain values (dict order does not matter)."""
    return _feed(0, state)


def seal(state: dict) -> dict:
    """``state`` plus its checksum, for a checkpoint."""
    state = {k: v for k, v in state.items() if k != CHECKSUM_KEY}
    return {**state, CHECKSUM_KEY: checksum(state)}


def unseal(state: dict, what: str) -> dict:
    """``state`` without its checksum, after verifying it; states saved before checksums existed pass."""
    if CHECKSUM_KEY not in state:
        return state
    body = {k: v for k, v in state.items() if k != CHECKSUM_KEY}
    if checksum(body) != int(state[CHECKSUM_KEY]):
        raise ValueError(
            f"the {what} state in this checkpoint fails its checksum: the file was corrupted after it was saved "
            "(flipped bytes on disk or in transfer). Resume from an earlier checkpoint, or re-copy the file.")
    return body


def require_same_config(what: str, saved: dict, current: dict) -> None:
    """Refuse to resume ``what`` under settings that differ from the checkpoint's, naming both."""
    differ = sorted(k for k in set(saved) | set(current) if _plain(saved.get(k)) != _plain(current.get(k)))
    if differ:
        was = ", ".join(f"{k}={_plain(saved.get(k))!r}" for k in differ)
        now = ", ".join(f"{k}={_plain(current.get(k))!r}" for k in differ)
        raise ValueError(f"this checkpoint's {what} was trained with {was}; this run has {now}. Use the same "
                         f"settings to resume, or start a new run without ckpt_path/resume_from_checkpoint")


def _plain(value):
    return list(value) if isinstance(value, tuple) else value
