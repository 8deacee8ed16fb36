"""Lightning doors. Importing this package needs pytorch-lightning (``pip install 'effplug[lightning]'``)."""

from effplug import strategies  # noqa: F401  (registers the strategy names)
from effplug.callbacks.activation import ActivationCompression
from effplug.callbacks.fused import FusedKernels
from effplug.callbacks.pruning import Pruning
from effplug.callbacks.quant import Binarization, QuantizationAwareTraining

__all__ = ["ActivationCompression", "Binarization", "FusedKernels", "Pruning", "QuantizationAwareTraining"]
