"""HuggingFace doors. Importing this package needs transformers (``pip install 'effplug[hf]'``)."""

from effplug.hf.activation import ActivationCompressionCallback, EffTrainer

__all__ = ["ActivationCompressionCallback", "EffTrainer"]
