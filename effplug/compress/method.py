"""``CompressionMethod``: what every activation-compression method (ActNN, GACT, Mesa, COMET, DIVISION) is.

A method encodes one saved tensor (``encode(x, slot)`` gives a payload with ``nbytes``, or None to keep it
exact, with ``decline_reason`` saying why) and decodes it. The defaults here are what a method with fixed
settings needs: a calibration probe that is its own encoding, nothing to adapt, nothing to log or save.
"""

from __future__ import annotations

import torch


class CompressionMethod:
    name = ""
    needs_calibration = False  # True: the engine measures each tensor's gradient effect and calls calibrate()
    adapts_per_tensor = False  # True: calibrate() takes any subset of tensors (COMET); False: a whole round (GACT)
    decline_reason = ""

    def __init__(self, config):
        self.config = config

    def encode(self, x: torch.Tensor, slot: int):
        raise NotImplementedError

    def decode(self, payload) -> torch.Tensor:
        raise NotImplementedError

    def probe(self, x: torch.Tensor, slot: int):
        """The payload used when this tensor's effect on the gradient is measured (calibration)."""
        return self.encode(x, slot)

    def calibrate(self, measurements) -> None:
        """Adapt to one calibration step's measurements (``effplug.compress.calibration.Measurement``)."""

    def summary(self) -> dict:
        """Numbers for the logs next to the engine's bytes (GACT: its average bits)."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
