"""Where the HF doors keep their state: a file next to each ``checkpoint-N``, read back from the folder resumed.

``Trainer.train(resume_from_checkpoint=path)`` may name a folder outside ``output_dir`` (a copied or
downloaded run), and callbacks are never told which one. The resumed path is the ``resume_from_checkpoint``
argument of the Trainer's training loop, read from its frame (``train`` resolves ``True`` to a path before
the loop starts); ``output_dir/checkpoint-<global_step>`` is the fallback.
"""

from __future__ import annotations

import logging
import os
import sys

import torch

from effplug.state import seal, unseal

log = logging.getLogger("effplug.hf")


def resumed_folder(args, state) -> str | None:
    """The checkpoint folder this ``train()`` call resumes from, or None for a fresh run."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "_inner_training_loop" and "resume_from_checkpoint" in frame.f_locals:
            path = frame.f_locals["resume_from_checkpoint"]
            if isinstance(path, (str, os.PathLike)) and os.path.isdir(path):
                return os.fspath(path)
            break
        frame = frame.f_back
    if state.global_step > 0:
        return os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
    return None


def save_state(args, state, filename: str, payload: dict) -> None:
    """Write ``payload`` (sealed with a checksum) into the checkpoint folder HF is saving."""
    folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
    os.makedirs(folder, exist_ok=True)
    torch.save(seal(payload), os.path.join(folder, filename))


def load_state(args, state, filename: str, what: str) -> dict | None:
    """The state saved by :func:`save_state` in the folder being resumed; None (with a warning) when absent."""
    folder = resumed_folder(args, state)
    if folder is None:
        return None
    path = os.path.join(folder, filename)
    if not os.path.exists(path):
        log.warning("effplug: resuming from %s, which holds no %s; that state restarts", folder, filename)
        return None
    return unseal(torch.load(path, weights_only=True), what)
