"""HuggingFace doors. Importing this package needs transformers (``pip install 'effplug[hf]'``)."""

from effplug.fused import apply_fused_kernels
from effplug.hf.activation import ActivationCompressionCallback
from effplug.hf.comm import GradientCompressionCallback, compress_gradients
from effplug.hf.pruning import PruningCallback
from effplug.hf.quant import BinarizationCallback, QuantizationCallback, apply_quantization
from effplug.hf.trainer import EffSeq2SeqTrainer, EffTrainer, EffTrainerMixin

__all__ = ["ActivationCompressionCallback", "BinarizationCallback", "EffSeq2SeqTrainer", "EffTrainer",
           "EffTrainerMixin", "GradientCompressionCallback", "PruningCallback",
           "QuantizationCallback", "apply_fused_kernels", "apply_quantization", "compress_gradients"]
