"""Lossless payloads for saved tensors that need no quantization: a bool as 1 bit per element, an integer tensor
in the narrowest type that holds it, a 0-or-constant float mask as 1 bit, and a 1-bit sign mask next to a lossy
payload for rectified (ReLU-like) outputs. Each is checked, so it is never lossy where it claims not to be."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from effplug.kernels.bitmask import pack_mask, unpack_mask
from effplug.sizes import tensor_nbytes


@dataclass
class BoolPayload:
    data: torch.Tensor
    shape: torch.Size

    @property
    def nbytes(self) -> int:
        return self.data.numel()


def pack_bool(t: torch.Tensor, positive: bool = False) -> BoolPayload:
    """``t != 0`` at 1 bit per element (``t > 0`` with ``positive``: a rectified tensor's sign pattern), in one
    read of ``t``."""
    return BoolPayload(pack_mask(t, positive), t.shape)


def unpack_bool(p: BoolPayload) -> torch.Tensor:
    return unpack_mask(p.data, p.shape)


@dataclass
class NarrowIntPayload:
    """An integer tensor stored losslessly in the narrowest signed type that holds its values.

    Max-pool indices are int64 but index an ``H*W`` plane: int8/int16 hold them exactly at 1/8-1/4 the bytes.
    """

    data: torch.Tensor
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.data)


NARROW_INTS = (torch.int8, torch.int16, torch.int32)


def narrow_int(t: torch.Tensor) -> NarrowIntPayload | None:
    lo, hi = (int(v) for v in torch.aminmax(t))
    for dtype in NARROW_INTS:
        info = torch.iinfo(dtype)
        if dtype.itemsize < t.element_size() and info.min <= lo and hi <= info.max:
            return NarrowIntPayload(t.to(dtype), t.dtype)
    return None


@dataclass
class RectifiedPayload:
    """A method's payload plus a 1-bit ``x > 0`` mask, for saved tensors whose minimum is exactly 0.

    ReLU-like ops save their output and backward uses only ``output > 0``: a small positive value that
    stochastic rounding sends to 0 would silently drop its gradient. The mask keeps that sign pattern exact
    (decoded positives are raised to the dtype's smallest normal at most, a negligible bias) at 1 bit/element.
    """

    mask: BoolPayload
    inner: object

    @property
    def nbytes(self) -> int:
        return self.mask.nbytes + self.inner.nbytes


@dataclass
class TwoLevelPayload:
    """A float tensor whose values are all 0 or one constant (CPU dropout saves such a float mask): 1 bit each."""

    mask: BoolPayload
    value: torch.Tensor  # 0-dim, the constant
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return self.mask.nbytes + self.value.element_size()


def two_level(t: torch.Tensor) -> TwoLevelPayload | None:
    """Exact 1-bit encoding when every nonzero element equals the maximum (checked in the same pass that packs
    the mask, so never lossy)."""
    data, top = pack_mask(t, two_level=True)
    if top is None:
        return None
    return TwoLevelPayload(BoolPayload(data, t.shape), top, t.dtype)


def decode_two_level(p: TwoLevelPayload) -> torch.Tensor:
    return unpack_mask(p.mask.data, p.mask.shape, value=p.value)


def decode_rectified(mask: BoolPayload, inner: torch.Tensor) -> torch.Tensor:
    """``mask ? max(inner, tiny) : 0``: decoded positives stay positive, exact zeros stay zero."""
    return unpack_mask(mask.data, mask.shape, rectify=inner)
