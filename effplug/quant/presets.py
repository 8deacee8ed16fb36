"""Backend presets: where and how a backend expects fake quantization, after MQBench's per-backend tables.

Each preset fixes the grid shape; ``QATConfig`` fields left as ``None`` take the preset's value.
"""

from __future__ import annotations

from dataclasses import dataclass

from effplug.options import checks_keywords


@checks_keywords
@dataclass(frozen=True)
class BackendPreset:
    name: str
    weight_symmetric: bool  # signed codes in [-(2^(b-1)-1), 2^(b-1)-1] (restricted range, zero-point 0)
    weight_per_channel: bool  # one scale per output channel
    act_mode: str  # "auto": unsigned [0, 2^b-1] for non-negative inputs, else signed symmetric;
    #               "symmetric": always signed; "asymmetric": affine [0, 2^b-1] with a zero-point
    power_of_two_scale: bool = False  # scales rounded up to 2^k (shift-only hardware)
    act_reduce_range: bool = False  # 8-bit activations use 7 bits of range (fbgemm's overflow guard)
    description: str = ""


PRESETS: dict[str, BackendPreset] = {
    p.name: p
    for p in (
        BackendPreset("generic", True, True, "auto",
                      description="symmetric per-channel weights; per-tensor activations, unsigned after ReLU"),
        BackendPreset("tensorrt", True, True, "symmetric",
                      description="TensorRT: symmetric per-channel weights, symmetric per-tensor activations"),
        BackendPreset("fbgemm", True, True, "asymmetric", act_reduce_range=True,
                      description="x86 fbgemm: symmetric per-channel weights, asymmetric (quint8) activations, "
                                  "reduce_range at 8 bits"),
        BackendPreset("onednn", True, True, "asymmetric",
                      description="oneDNN: symmetric per-channel weights, asymmetric (quint8) activations"),
        BackendPreset("snpe", False, False, "asymmetric",
                      description="Qualcomm SNPE/QNN: asymmetric per-tensor weights and activations"),
        BackendPreset("vitis", True, False, "symmetric", power_of_two_scale=True,
                      description="Xilinx Vitis: symmetric per-tensor, power-of-two scales"),
    )
}


def get_preset(name: str) -> BackendPreset:
    if name not in PRESETS:
        raise ValueError(f"backend={name!r} is not supported; use one of {', '.join(PRESETS)}")
    return PRESETS[name]
