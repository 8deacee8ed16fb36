"""HuggingFace doors. Importing this package needs transformers (``pip install 'effplug[hf]'``)."""

from effplug.hf.activation import ActivationCompressionCallback
from effplug.hf.quant import BinarizationCallback, QuantizationCallback, apply_quantization
from effplug.hf.trainer import EffTrainer

__all__ = ["ActivationCompressionCallback", "BinarizationCallback", "EffTrainer", "QuantizationCallback",
           "apply_quantization"]
