"""Lightning doors. Importing this package needs pytorch-lightning (``pip install 'effplug[lightning]'``)."""

from effplug.callbacks.activation import ActivationCompression

__all__ = ["ActivationCompression"]
