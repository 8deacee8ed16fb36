"""Codecs: the one encode/decode layer every technique uses to store or send a tensor in fewer bits.

A codec turns a tensor into a payload and back; ``nbytes(payload)`` is the exact number of bytes the payload
holds. The formulas live in ``effplug.kernels``; codecs add the state (seed streams, error-feedback residuals)
and the wire layout. See DESIGN.md, "The codec contract".
"""

from effplug.codecs.base import Codec, KeyedSeeds, tensor_nbytes
from effplug.codecs.dither import DitherCodec
from effplug.codecs.log import LogCodec
from effplug.codecs.pow2 import Pow2Codec
from effplug.codecs.seeds import SeedStream
from effplug.codecs.topk import SparsePayload, TopKCodec
from effplug.codecs.uniform import UniformCodec
from effplug.kernels.philox import resolve_seed

__all__ = ["Codec", "DitherCodec", "KeyedSeeds", "LogCodec", "Pow2Codec", "SeedStream", "SparsePayload", "TopKCodec", "UniformCodec",
           "resolve_seed", "tensor_nbytes"]
