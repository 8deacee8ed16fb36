"""Kernels: each a Triton kernel plus a torch reference with the same contract, chosen by ``dispatch``."""

from effplug.kernels.dispatch import active_backend_name, kernel_backend
from effplug.kernels.fake_quant import fake_quantize, quantization_codes
from effplug.kernels.pack import QuantizedTensor, packed_nbytes, quantize_pack, unpack_dequantize
from effplug.kernels.pow2 import Pow2Codes, log_quantize, pow2_decode, pow2_encode, pow2_encode_unit, pow2_round
from effplug.kernels.topk import topk_select

__all__ = [
    "Pow2Codes",
    "QuantizedTensor",
    "active_backend_name",
    "fake_quantize",
    "kernel_backend",
    "log_quantize",
    "packed_nbytes",
    "pow2_decode",
    "pow2_encode",
    "pow2_encode_unit",
    "pow2_round",
    "quantization_codes",
    "quantize_pack",
    "topk_select",
    "unpack_dequantize",
]
