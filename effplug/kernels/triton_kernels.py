"""Triton kernels behind ``effplug.kernels``; each implements the contract of its torch reference.

Imported lazily by ``dispatch.triton_kernels()``. Written to run under ``TRITON_INTERPRET=1`` too:
``tl.cast`` on scalars, no block pointers, libdevice or inline asm, and no multi-config autotune.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from effplug.kernels.dispatch import interpreter_block, triton_interpreting

_TL_DTYPE = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}


@triton.jit
def _random_block(seed, first, N: tl.constexpr):
    """Words ``first .. first + N - 1`` of the same stream, one Philox evaluation per four of them (``first`` a
    multiple of 4): counter ``c`` gives words ``4c .. 4c + 3``, interleaved back into element order."""
    r0, r1, r2, r3 = tl.randint4x(seed, first // 4 + tl.arange(0, N // 4))
    # join(a, b) stacks along a new last axis: this nesting flattens to r0, r1, r2, r3 per counter
    return tl.reshape(tl.join(tl.join(r0, r2), tl.join(r1, r3)), (N,))


@triton.jit
def _round_directed(v, DTYPE: tl.constexpr, UP: tl.constexpr):
    """Round fp32 ``v`` to the 16-bit float DTYPE toward +inf (UP) or -inf, via its bit pattern."""
    if DTYPE == tl.bfloat16:
        # bf16 is the top half of fp32: truncate the bits (toward zero), then step the magnitude up when the
        # dropped half was nonzero and the direction asks for it. Pure integer work, so the interpreter
        # (which keeps bf16 values at fp32 precision until stored) gets it right too.
        v_bits = v.to(tl.int32, bitcast=True)
        top = v_bits >> 16
        inexact = (v_bits & 0xFFFF) != 0
        away = (v > 0) if UP else (v < 0)
        top = tl.where(inexact & away, top + 1, top)
        return tl.cast(top, tl.int16).to(tl.bfloat16, bitcast=True)
    y = v.to(DTYPE)
    back = y.to(tl.float32)
    bits = y.to(tl.int16, bitcast=True)
    if UP:
        stepped = tl.where(y > 0, bits + 1, tl.where(y < 0, bits - 1, 1))
        needs = back < v
    else:
        stepped = tl.where(y > 0, bits - 1, tl.where(y < 0, bits + 1, -32767))
        needs = back > v
    stepped = tl.cast(stepped, tl.int16).to(DTYPE, bitcast=True)
    return tl.where(needs, stepped, y)


@triton.jit
def _quantize_rows(x, valid, pid, rows, data_ptr, scale_ptr, zero_ptr, n_groups, seed,
                   BITS: tl.constexpr, GROUP: tl.constexpr, ROWS: tl.constexpr,
                   STOCHASTIC: tl.constexpr, SCALE_DTYPE: tl.constexpr):
    """Quantize and pack ``ROWS`` groups of fp32 ``x`` (``valid`` marks real elements) and store them."""
    lo = tl.min(tl.where(valid, x, float("inf")), axis=1)
    hi = tl.max(tl.where(valid, x, float("-inf")), axis=1)
    zero = _round_directed(lo, SCALE_DTYPE, False)
    levels: tl.constexpr = (1 << BITS) - 1
    scale = _round_directed((hi - zero.to(tl.float32)) / levels, SCALE_DTYPE, True)
    s = scale.to(tl.float32)[:, None]
    v = tl.where(s > 0, (x - zero.to(tl.float32)[:, None]) / s, 0.0)
    if STOCHASTIC:
        r = tl.reshape(_random_block(seed, pid * (ROWS * GROUP), ROWS * GROUP), (ROWS, GROUP))
        u = tl.cast(r >> 8, tl.float32) * (1.0 / 16777216.0)
    else:
        u = 0.5
    q = tl.minimum(tl.maximum(tl.floor(v + u), 0.0), levels)
    q = tl.where(valid, q, 0.0).to(tl.int32)
    PER: tl.constexpr = 8 // BITS
    q = tl.reshape(q, (ROWS * GROUP // PER, PER))
    shifts = tl.arange(0, PER) * BITS
    packed = tl.sum(q << shifts[None, :], axis=1)
    byte_offs = pid * (ROWS * GROUP // PER) + tl.arange(0, ROWS * GROUP // PER)
    tl.store(data_ptr + byte_offs, packed.to(tl.uint8), mask=byte_offs < n_groups * (GROUP // PER))
    row_ok = rows < n_groups
    tl.store(scale_ptr + rows, scale, mask=row_ok)
    tl.store(zero_ptr + rows, zero, mask=row_ok)


@triton.jit
def _load_group_rows(x_ptr, n, pid, GROUP: tl.constexpr, ROWS: tl.constexpr):
    """Program ``pid``'s ``ROWS`` groups: their indices, element offsets, validity and fp32 values."""
    rows = pid * ROWS + tl.arange(0, ROWS)
    offs = rows[:, None] * GROUP + tl.arange(0, GROUP)[None, :]
    valid = offs < n
    return rows, offs, valid, tl.load(x_ptr + offs, mask=valid, other=0.0).to(tl.float32)


@triton.jit
def _quantize_pack_kernel(
    x_ptr, data_ptr, scale_ptr, zero_ptr, n, n_groups, seed,
    BITS: tl.constexpr, GROUP: tl.constexpr, ROWS: tl.constexpr,
    STOCHASTIC: tl.constexpr, SCALE_DTYPE: tl.constexpr,
):
    pid = tl.program_id(0)
    rows, offs, valid, x = _load_group_rows(x_ptr, n, pid, GROUP, ROWS)
    _quantize_rows(x, valid, pid, rows, data_ptr, scale_ptr, zero_ptr, n_groups, seed,
                   BITS, GROUP, ROWS, STOCHASTIC, SCALE_DTYPE)


POW2_BLOCK = 2048  # elements per program of the natural-compression / LUQ kernel on a GPU
ELEMENTWISE_BLOCK = 1024  # fake quantization and the per-channel affine quantizer

# Elements per program of the group kernels on a GPU: 2048 keeps the stochastic quantizer at or under 111
# registers with no spills on sm_80/sm_90 (4096 took 188-255 registers and spilled; compile_tier measures it).
GROUP_KERNEL_BLOCK = 2048


def _rows_per_program(n_groups: int, group_size: int) -> int:
    budget = interpreter_block(n_groups * group_size, gpu_block=GROUP_KERNEL_BLOCK)
    return max(1, min(budget // group_size, 1 << max(0, (n_groups - 1).bit_length())))


def quantize_pack(flat, bits, group_size, stochastic, seed, scale_dtype):
    n = flat.numel()
    n_groups = -(-n // group_size)
    data = torch.empty(n_groups * group_size * bits // 8, dtype=torch.uint8, device=flat.device)
    scale = torch.empty(n_groups, dtype=scale_dtype, device=flat.device)
    zero = torch.empty(n_groups, dtype=scale_dtype, device=flat.device)
    rows = _rows_per_program(n_groups, group_size)
    grid = (triton.cdiv(n_groups, rows),)
    _quantize_pack_kernel[grid](
        flat, data, scale, zero, n, n_groups, seed,
        BITS=bits, GROUP=group_size, ROWS=rows, STOCHASTIC=stochastic, SCALE_DTYPE=_TL_DTYPE[scale_dtype],
    )
    return data, scale, zero


@triton.jit
def _unpack_dequantize_kernel(
    data_ptr, scale_ptr, zero_ptr, out_ptr, n, n_groups,
    BITS: tl.constexpr, GROUP: tl.constexpr, ROWS: tl.constexpr,
):
    offs, x = _dequantize_group_rows(data_ptr, scale_ptr, zero_ptr, n_groups, tl.program_id(0), BITS, GROUP, ROWS)
    tl.store(out_ptr + offs, x.to(out_ptr.dtype.element_ty), mask=offs < n)


@triton.jit
def _dequantize_group_rows(data_ptr, scale_ptr, zero_ptr, n_groups, pid, BITS: tl.constexpr, GROUP: tl.constexpr,
                           ROWS: tl.constexpr):
    """Program ``pid``'s ``ROWS`` groups decoded to fp32 ``q * scale + zero``, with their element offsets."""
    rows = pid * ROWS + tl.arange(0, ROWS)
    offs = rows[:, None] * GROUP + tl.arange(0, GROUP)[None, :]
    row_ok = rows < n_groups
    PER: tl.constexpr = 8 // BITS
    byte = tl.load(data_ptr + offs // PER, mask=row_ok[:, None], other=0).to(tl.int32)
    q = (byte >> ((offs % PER) * BITS)) & ((1 << BITS) - 1)
    s = tl.load(scale_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    z = tl.load(zero_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    return offs, q.to(tl.float32) * s[:, None] + z[:, None]


def unpack_dequantize(qt, out_dtype):
    n = qt.numel
    n_groups = qt.scale.numel()
    out = torch.empty(n, dtype=out_dtype, device=qt.device)
    rows = _rows_per_program(n_groups, qt.group_size)
    grid = (triton.cdiv(n_groups, rows),)
    _unpack_dequantize_kernel[grid](
        qt.data, qt.scale, qt.zero, out, n, n_groups, BITS=qt.bits, GROUP=qt.group_size, ROWS=rows
    )
    return out


@triton.jit
def _pow2_sr_kernel(x_ptr, out_ptr, n, seed, alpha, lo_exp, EMIT_CODES: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    alpha_f = tl.cast(alpha, tl.float32)
    t = tl.abs(x) / alpha_f
    r = _random_block(seed, tl.program_id(0) * BLOCK, BLOCK)
    bits = t.to(tl.int32, bitcast=True)
    exponent = ((bits >> 23) & 0xFF) - 127
    mantissa = tl.cast(bits & 0x7FFFFF, tl.uint32)
    round_up = tl.where(((r >> 9) < mantissa) & (exponent < 127), 1, 0)  # 2**128 is inf: the top binade stays
    in_range = (((exponent + round_up) + 127) << 23).to(tl.float32, bitcast=True)
    lo = tl.cast(lo_exp, tl.int32)
    lowest = tl.cast((lo + 127) << 23, tl.int32).to(tl.float32, bitcast=True)
    inv_lowest = tl.cast((127 - lo) << 23, tl.int32).to(tl.float32, bitcast=True)
    u = tl.cast(r >> 8, tl.float32) * (1.0 / 16777216.0)
    underflow = tl.where(u < t * inv_lowest, lowest, 0.0)
    mag = tl.where(t >= lowest, in_range, underflow)
    finite = (bits & 0x7F800000) != 0x7F800000
    mag = tl.where(finite, mag, t)
    if EMIT_CODES:
        mag_exp = ((mag.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
        code = tl.where(mag > 0, mag_exp - lo + 1, 0) | tl.where(x < 0, 128, 0)
        tl.store(out_ptr + offs, code.to(tl.uint8), mask=mask)
    else:
        value = mag * alpha_f
        value = tl.where(x < 0, -value, value)
        tl.store(out_ptr + offs, value.to(out_ptr.dtype.element_ty), mask=mask)


def pow2_sr(flat, seed, alpha, lo_exp, emit_codes):
    n = flat.numel()
    out = torch.empty(n, dtype=torch.uint8 if emit_codes else flat.dtype, device=flat.device)
    block = interpreter_block(n, gpu_block=POW2_BLOCK)
    _pow2_sr_kernel[(triton.cdiv(n, block),)](flat, out, n, seed, alpha, lo_exp, EMIT_CODES=emit_codes, BLOCK=block)
    return out


@triton.jit
def _topk_count_kernel(x_ptr, counts_ptr, n, threshold, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    m = tl.abs(tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32))
    m = tl.where(m != m, float("inf"), m)  # NaN counts as the largest magnitude
    thr = tl.cast(threshold, tl.float32)
    tl.store(counts_ptr + 2 * pid, tl.sum(tl.where(mask & (m > thr), 1, 0), axis=0))
    tl.store(counts_ptr + 2 * pid + 1, tl.sum(tl.where(mask & (m == thr), 1, 0), axis=0))


@triton.jit
def _topk_compact_kernel(
    x_ptr, values_ptr, indices_ptr, n, threshold, needed_ties, above_before_ptr, ties_before_ptr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    m = tl.abs(x.to(tl.float32))
    m = tl.where(m != m, float("inf"), m)
    thr = tl.cast(threshold, tl.float32)
    tied = tl.where(mask & (m == thr), 1, 0)
    tie_rank = tl.load(ties_before_ptr + pid) + tl.cumsum(tied, axis=0)
    keep = tl.where(mask & (m > thr), 1, 0) | (tied & tl.where(tie_rank <= needed_ties, 1, 0))
    # Rank among kept elements = kept before this block + kept earlier in this block.
    kept_before = tl.load(above_before_ptr + pid) + tl.minimum(tl.load(ties_before_ptr + pid), needed_ties)
    slot = kept_before + tl.cumsum(keep, axis=0) - 1
    tl.store(values_ptr + slot, x, mask=keep == 1)
    tl.store(indices_ptr + slot, tl.cast(offs, tl.int64), mask=keep == 1)


TOPK_BLOCK = 2048  # 4096 took 255 registers and spilled 32 B in the compaction on sm_80


def topk_select(flat, threshold, k):
    n = flat.numel()
    block = interpreter_block(n, gpu_block=TOPK_BLOCK)
    n_blocks = triton.cdiv(n, block)
    thr = float(threshold.item())
    counts = torch.empty(n_blocks, 2, dtype=torch.int32, device=flat.device)
    _topk_count_kernel[(n_blocks,)](flat, counts, n, thr, BLOCK=block)
    above_before = torch.cumsum(counts[:, 0], 0, dtype=torch.int64) - counts[:, 0]
    ties_before = torch.cumsum(counts[:, 1], 0, dtype=torch.int64) - counts[:, 1]
    needed_ties = k - int(counts[:, 0].sum().item())
    values = torch.empty(k, dtype=flat.dtype, device=flat.device)
    indices = torch.empty(k, dtype=torch.int64, device=flat.device)
    _topk_compact_kernel[(n_blocks,)](
        flat, values, indices, n, thr, needed_ties, above_before, ties_before, BLOCK=block
    )
    return values, indices


@triton.jit
def _channel_block(x_ptr, n, channels, inner, BLOCK: tl.constexpr):
    """This program's block of a per-channel op: offsets, mask, each element's channel, the fp32 values."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    channel = (offs // inner) % channels
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    return offs, mask, channel, x


@triton.jit
def _fake_quantize_kernel(x_ptr, out_ptr, inv_ptr, scale_ptr, zero_ptr, n, channels, inner, qmin, qmax,
                          BLOCK: tl.constexpr):
    offs, mask, channel, x = _channel_block(x_ptr, n, channels, inner, BLOCK)
    inv = tl.load(inv_ptr + channel, mask=mask, other=1.0)
    scale = tl.load(scale_ptr + channel, mask=mask, other=1.0)
    zero = tl.load(zero_ptr + channel, mask=mask, other=0.0)
    v = x * inv
    r = tl.floor(v + 0.5)  # round half to even, as torch.round: step back from odd results of exact ties
    odd = (r - 2.0 * tl.floor(r * 0.5)) != 0.0
    r = tl.where(((r - v) == 0.5) & odd, r - 1.0, r)
    codes = tl.minimum(tl.maximum(r + zero, tl.cast(qmin, tl.float32)), tl.cast(qmax, tl.float32))
    out = (codes - zero) * scale
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


def fake_quantize(x, inv_scale, scale, zero, qmin, qmax, channels, inner):
    n = x.numel()
    out = torch.empty_like(x)
    block = interpreter_block(n, gpu_block=ELEMENTWISE_BLOCK)
    _fake_quantize_kernel[(triton.cdiv(n, block),)](x, out, inv_scale, scale, zero, n, channels, inner, qmin, qmax,
                                                    BLOCK=block)
    return out


@triton.jit
def _quantize_affine_kernel(x_ptr, codes_ptr, low_ptr, step_ptr, n, channels, inner, seed,
                            BITS: tl.constexpr, STOCHASTIC: tl.constexpr, BLOCK: tl.constexpr):
    offs, mask, channel, x = _channel_block(x_ptr, n, channels, inner, BLOCK)
    low = tl.load(low_ptr + channel, mask=mask, other=0.0)
    step = tl.load(step_ptr + channel, mask=mask, other=1.0)
    v = (x - low) / step
    if STOCHASTIC:
        u = tl.cast(_random_block(seed, tl.program_id(0) * BLOCK, BLOCK) >> 8, tl.float32) * (1.0 / 16777216.0)
    else:
        u = 0.5
    levels: tl.constexpr = (1 << BITS) - 1
    q = tl.minimum(tl.maximum(tl.floor(v + u), 0.0), levels)
    tl.store(codes_ptr + offs, q.to(tl.uint8), mask=mask)


def quantize_affine_codes(flat, low, step, channels, inner, bits, stochastic, seed):
    n = flat.numel()
    codes = torch.empty(n, dtype=torch.uint8, device=flat.device)
    block = interpreter_block(n, gpu_block=ELEMENTWISE_BLOCK)
    _quantize_affine_kernel[(triton.cdiv(n, block),)](flat, codes, low, step, n, channels, inner, seed,
                                                      BITS=bits, STOCHASTIC=stochastic, BLOCK=block)
    return codes


@triton.jit
def _round_to_dtype(v, DTYPE: tl.constexpr):
    """fp32 ``v`` to DTYPE, rounding to nearest even. bf16 goes through its bit pattern, because the
    interpreter truncates fp32 -> bf16 and a GPU rounds: the integer form is the same on both."""
    if DTYPE == tl.bfloat16:
        bits = v.to(tl.int32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        rounded = tl.where((bits & 0x7F800000) == 0x7F800000, bits >> 16, rounded)  # inf/nan: keep the bits
        return tl.cast(rounded, tl.int16).to(tl.bfloat16, bitcast=True)
    return v.to(DTYPE)


@triton.jit
def _bias_dropout_residual_kernel(x_ptr, bias_ptr, residual_ptr, out_ptr, n, hidden, seed, p, scale,
                                  HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    y = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + offs % hidden, mask=mask, other=0.0).to(tl.float32)
    r = _random_block(seed, tl.program_id(0) * BLOCK, BLOCK)
    keep = tl.cast(r >> 8, tl.float32) * (1.0 / 16777216.0) >= tl.cast(p, tl.float32)
    y = tl.where(keep, y * tl.cast(scale, tl.float32), 0.0)
    out = tl.load(residual_ptr + offs, mask=mask, other=0.0).to(tl.float32) + y
    tl.store(out_ptr + offs, _round_to_dtype(out, out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _dropout_backward_kernel(grad_ptr, out_ptr, n, seed, p, scale, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    r = _random_block(seed, tl.program_id(0) * BLOCK, BLOCK)
    keep = tl.cast(r >> 8, tl.float32) * (1.0 / 16777216.0) >= tl.cast(p, tl.float32)
    g = tl.where(keep, g * tl.cast(scale, tl.float32), 0.0)
    tl.store(out_ptr + offs, _round_to_dtype(g, out_ptr.dtype.element_ty), mask=mask)


def bias_dropout_residual(x, bias, residual, seed, p, scale):
    n = x.numel()
    out = torch.empty_like(residual)
    block = interpreter_block(n, gpu_block=ELEMENTWISE_BLOCK)
    has_bias = bias is not None
    _bias_dropout_residual_kernel[(triton.cdiv(n, block),)](x, bias if has_bias else x, residual, out, n,
                                                            x.shape[-1], seed, p, scale, HAS_BIAS=has_bias,
                                                            BLOCK=block)
    return out


def dropout_backward(grad, seed, p, scale):
    n = grad.numel()
    out = torch.empty_like(grad)
    block = interpreter_block(n, gpu_block=ELEMENTWISE_BLOCK)
    _dropout_backward_kernel[(triton.cdiv(n, block),)](grad, out, n, seed, p, scale, BLOCK=block)
    return out


# Sparse low-precision products (effplug.kernels.spmm / sddmm; Magicube, SC'22). One vector row per program:
# its V rows sit in a 16-row tile (tl.dot's minimum), the rest of the tile masked to zero.
SPARSE_TILE_M, SPARSE_BLOCK_K, SPARSE_BLOCK_N = 16, 32, 32


@triton.jit
def _sparse_values_tile(values_ptr, rk, rm, kmask, V: tl.constexpr, BITS: tl.constexpr):
    """int8 ``[TILE_M, BLOCK_K]`` tile of stored values: nonzeros ``rk`` (columns), rows ``rm`` of each vector."""
    index = rk[None, :] * V + rm[:, None]
    valid = (rm[:, None] < V) & kmask[None, :]
    if BITS == 8:
        return tl.load(values_ptr + index, mask=valid, other=0)
    byte = tl.load(values_ptr + index // 2, mask=valid, other=136)  # 136 = two codes of zero (8 | 8 << 4)
    code = (byte.to(tl.int32) >> ((index % 2) * 4)) & 15
    return (code - 8).to(tl.int8)


@triton.jit
def _spmm_kernel(row_ptr, col_idx, values_ptr, a_scale_ptr, b_ptr, b_scale_ptr, out_ptr, n_cols,
                 stride_bk, stride_on, V: tl.constexpr, BITS: tl.constexpr, SPLIT: tl.constexpr,
                 TILE_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    vrow = tl.program_id(0)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = rn < n_cols
    rm = tl.arange(0, TILE_M)
    start = tl.load(row_ptr + vrow)
    end = tl.load(row_ptr + vrow + 1)
    acc = tl.zeros([TILE_M, BLOCK_N], dtype=tl.int32)
    acc_low = tl.zeros([TILE_M, BLOCK_N], dtype=tl.int32)
    row_sum = tl.zeros([TILE_M], dtype=tl.int32)
    for j in range(start, end, BLOCK_K):
        rk = j + tl.arange(0, BLOCK_K)
        kmask = rk < end
        cols = tl.load(col_idx + rk, mask=kmask, other=0)
        a = _sparse_values_tile(values_ptr, rk, rm, kmask, V, BITS)
        b_mask = kmask[:, None] & nmask[None, :]
        b = tl.load(b_ptr + cols[:, None] * stride_bk + rn[None, :], mask=b_mask, other=0)
        if SPLIT:
            # Magicube's bit split: a 16-bit b = 256·high + (low' + 128), high and low' both int8
            high = (b >> 8).to(tl.int8)
            low = ((b & 255) - 128).to(tl.int8)
            acc += tl.dot(a, high, out_dtype=tl.int32)
            acc_low += tl.dot(a, low, out_dtype=tl.int32)
            row_sum += tl.sum(a.to(tl.int32), axis=1)
        else:
            acc += tl.dot(a, b, out_dtype=tl.int32)
    if SPLIT:
        total = acc.to(tl.int64) * 256 + acc_low.to(tl.int64) + row_sum.to(tl.int64)[:, None] * 128
    else:
        total = acc.to(tl.int64)
    rows = vrow * V + rm
    row_ok = rm < V
    a_scale = tl.load(a_scale_ptr + rows, mask=row_ok, other=0.0)
    b_scale = tl.load(b_scale_ptr + rn, mask=nmask, other=0.0)
    out = total.to(tl.float32) * a_scale[:, None] * b_scale[None, :]
    tl.store(out_ptr + rows[:, None] * stride_on + rn[None, :], out, mask=row_ok[:, None] & nmask[None, :])


def spmm(matrix, qb: torch.Tensor, b_scale: torch.Tensor) -> torch.Tensor:
    """fp32 ``[padded_rows, N]`` = dequant(matrix) @ dequant(qb); ``qb`` int8 or int16 ``[K, N]``."""
    qb = qb.contiguous()
    n_cols = qb.shape[1]
    out = torch.empty(matrix.padded_rows, n_cols, dtype=torch.float32, device=qb.device)
    block_n = interpreter_block(n_cols, SPARSE_BLOCK_N, cap=256)
    grid = (matrix.vector_rows, triton.cdiv(n_cols, block_n))
    _spmm_kernel[grid](matrix.row_ptr, matrix.col_idx, matrix.values, matrix.scales, qb, b_scale, out, n_cols,
                       qb.stride(0), out.stride(0), V=matrix.vector, BITS=matrix.bits,
                       SPLIT=qb.dtype == torch.int16, TILE_M=SPARSE_TILE_M, BLOCK_K=SPARSE_BLOCK_K, BLOCK_N=block_n)
    return out


@triton.jit
def _sddmm_kernel(row_ptr, col_idx, a_ptr, a_scale_ptr, b_ptr, b_scale_ptr, out_ptr, depth, stride_a, stride_b,
                  V: tl.constexpr, TILE_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_NNZ: tl.constexpr):
    vrow = tl.program_id(0)
    start = tl.load(row_ptr + vrow)
    end = tl.load(row_ptr + vrow + 1)
    rj = start + tl.program_id(1) * BLOCK_NNZ + tl.arange(0, BLOCK_NNZ)
    jmask = rj < end
    cols = tl.load(col_idx + rj, mask=jmask, other=0)
    rm = tl.arange(0, TILE_M)
    row_ok = rm < V
    rows = vrow * V + rm
    acc = tl.zeros([TILE_M, BLOCK_NNZ], dtype=tl.int32)
    for k in range(0, depth, BLOCK_K):
        rk = k + tl.arange(0, BLOCK_K)
        kmask = rk < depth
        a = tl.load(a_ptr + rows[:, None] * stride_a + rk[None, :], mask=row_ok[:, None] & kmask[None, :], other=0)
        bt = tl.load(b_ptr + cols[None, :] * stride_b + rk[:, None], mask=kmask[:, None] & jmask[None, :], other=0)
        acc += tl.dot(a, bt, out_dtype=tl.int32)
    a_scale = tl.load(a_scale_ptr + rows, mask=row_ok, other=0.0)
    b_scale = tl.load(b_scale_ptr + cols, mask=jmask, other=0.0)
    out = acc.to(tl.float32) * a_scale[:, None] * b_scale[None, :]
    tl.store(out_ptr + rj[None, :] * V + rm[:, None], out, mask=row_ok[:, None] & jmask[None, :])


def sddmm(pattern, qa: torch.Tensor, a_scale: torch.Tensor, qb: torch.Tensor, b_scale: torch.Tensor) -> torch.Tensor:
    """fp32 ``[nnz, V]``: (dequant(qa) @ dequant(qb)ᵀ) at the pattern's vectors; ``qa`` int8 ``[padded_rows, K]``."""
    qa, qb = qa.contiguous(), qb.contiguous()
    out = torch.zeros(pattern.nnz_vectors, pattern.vector, dtype=torch.float32, device=qa.device)
    lengths = pattern.row_ptr[1:] - pattern.row_ptr[:-1]
    longest = int(lengths.max()) if lengths.numel() else 0
    if longest == 0:
        return out
    block = interpreter_block(longest, SPARSE_BLOCK_N, cap=256)
    grid = (pattern.vector_rows, triton.cdiv(longest, block))
    _sddmm_kernel[grid](pattern.row_ptr, pattern.col_idx, qa, a_scale, qb, b_scale, out, qa.shape[1], qa.stride(0),
                        qb.stride(0), V=pattern.vector, TILE_M=SPARSE_TILE_M, BLOCK_K=SPARSE_BLOCK_K, BLOCK_NNZ=block)
    return out


# RMSNorm (effplug.kernels.rms_norm): ROWS rows of H per program, the sums of each row in float64.
@triton.jit
def _rms_norm_forward_kernel(x_ptr, w_ptr, out_ptr, rstd_ptr, n_rows, hidden, eps, offset,
                             ROWS: tl.constexpr, BLOCK_H: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_H)
    mask = (rows[:, None] < n_rows) & (cols[None, :] < hidden)
    index = rows[:, None] * hidden + cols[None, :]
    x = tl.load(x_ptr + index, mask=mask, other=0.0).to(tl.float32)
    x64 = x.to(tl.float64)
    mean_square = tl.sum(x64 * x64, axis=1) / tl.cast(hidden, tl.float64)
    rstd = (1.0 / tl.sqrt(mean_square + tl.cast(eps, tl.float64))).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=cols < hidden, other=0.0).to(tl.float32) + tl.cast(offset, tl.float32)
    y = (x * rstd[:, None]) * w[None, :]
    tl.store(out_ptr + index, _round_to_dtype(y, out_ptr.dtype.element_ty), mask=mask)
    tl.store(rstd_ptr + rows, rstd, mask=rows < n_rows)


@triton.jit
def _rms_norm_backward_kernel(grad_ptr, x_ptr, w_ptr, rstd_ptr, dx_ptr, dw_ptr, n_rows, hidden, offset,
                              ROWS: tl.constexpr, ROWS_PER_PROGRAM: tl.constexpr, BLOCK_H: tl.constexpr):
    cols = tl.arange(0, BLOCK_H)
    w = tl.load(w_ptr + cols, mask=cols < hidden, other=0.0).to(tl.float32) + tl.cast(offset, tl.float32)
    dw = tl.zeros([BLOCK_H], dtype=tl.float64)
    for start in range(0, ROWS_PER_PROGRAM, ROWS):
        rows = tl.program_id(0) * ROWS_PER_PROGRAM + start + tl.arange(0, ROWS)
        mask = (rows[:, None] < n_rows) & (cols[None, :] < hidden)
        index = tl.cast(rows, tl.int64)[:, None] * hidden + cols[None, :]
        x = tl.load(x_ptr + index, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(grad_ptr + index, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + rows, mask=rows < n_rows, other=0.0)
        gw = g * w[None, :]
        rstd64 = rstd.to(tl.float64)
        dot = tl.sum(gw.to(tl.float64) * x.to(tl.float64), axis=1)
        coeff = (dot / tl.cast(hidden, tl.float64) * (rstd64 * rstd64 * rstd64)).to(tl.float32)
        dx = rstd[:, None] * gw - x * coeff[:, None]
        tl.store(dx_ptr + index, _round_to_dtype(dx, dx_ptr.dtype.element_ty), mask=mask)
        dw += tl.sum((g * (x * rstd[:, None])).to(tl.float64), axis=0)  # fp32 products, float64 sums
    tl.store(dw_ptr + tl.program_id(0) * hidden + cols, dw, mask=cols < hidden)


def _norm_rows(n_rows: int, hidden: int) -> tuple[int, int]:
    block_h = triton.next_power_of_2(hidden)
    if not triton_interpreting():
        return 1, block_h  # a row per program on a GPU
    return max(1, min(triton.next_power_of_2(max(n_rows, 1)), 16384 // block_h)), block_h


def norm_warps(block_h: int) -> int:
    """Warps per row program: 8 elements of a row per thread at most, so the float64 sums stay in registers."""
    return max(4, min(16, block_h // 256))


def rms_norm_forward(x2d, weight, eps, offset):
    n_rows, hidden = x2d.shape
    out = torch.empty_like(x2d)
    rstd = torch.empty(n_rows, dtype=torch.float32, device=x2d.device)
    rows, block_h = _norm_rows(n_rows, hidden)
    _rms_norm_forward_kernel[(triton.cdiv(n_rows, rows),)](x2d, weight, out, rstd, n_rows, hidden, eps, offset,
                                                           ROWS=rows, BLOCK_H=block_h, num_warps=norm_warps(block_h))
    return out, rstd


def rms_norm_backward(grad2d, x2d, weight, rstd, offset):
    """dx, and the float64 partials of dw, one row per program (the caller sums them)."""
    n_rows, hidden = x2d.shape
    dx = torch.empty_like(x2d)
    rows, per_program, programs = norm_backward_grid(n_rows, hidden)
    dw = torch.empty(programs, hidden, dtype=torch.float64, device=x2d.device)
    block_h = triton.next_power_of_2(hidden)
    _rms_norm_backward_kernel[(programs,)](grad2d, x2d, weight, rstd, dx, dw, n_rows, hidden, offset, ROWS=rows,
                                           ROWS_PER_PROGRAM=per_program, BLOCK_H=block_h,
                                           num_warps=norm_warps(block_h))
    return dx, dw


# LayerNorm (effplug.kernels.layer_norm): the row's mean and rstd in float64, rounded to fp32 once.
@triton.jit
def _layer_norm_forward_kernel(x_ptr, w_ptr, b_ptr, out_ptr, mean_ptr, rstd_ptr, n_rows, hidden, eps,
                               HAS_BIAS: tl.constexpr, ROWS: tl.constexpr, BLOCK_H: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_H)
    mask = (rows[:, None] < n_rows) & (cols[None, :] < hidden)
    index = rows[:, None] * hidden + cols[None, :]
    x = tl.load(x_ptr + index, mask=mask, other=0.0).to(tl.float32)
    x64 = x.to(tl.float64)
    n = tl.cast(hidden, tl.float64)
    mean64 = tl.sum(x64, axis=1) / n
    centered = tl.where(mask, x64 - mean64[:, None], 0.0)
    var = tl.sum(centered * centered, axis=1) / n
    mean = mean64.to(tl.float32)
    rstd = (1.0 / tl.sqrt(var + tl.cast(eps, tl.float64))).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=cols < hidden, other=0.0).to(tl.float32)
    y = ((x - mean[:, None]) * rstd[:, None]) * w[None, :]
    if HAS_BIAS:
        y = y + tl.load(b_ptr + cols, mask=cols < hidden, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + index, _round_to_dtype(y, out_ptr.dtype.element_ty), mask=mask)
    tl.store(mean_ptr + rows, mean, mask=rows < n_rows)
    tl.store(rstd_ptr + rows, rstd, mask=rows < n_rows)


@triton.jit
def _layer_norm_backward_kernel(grad_ptr, x_ptr, w_ptr, mean_ptr, rstd_ptr, dx_ptr, dw_ptr, db_ptr, n_rows, hidden,
                                HAS_BIAS: tl.constexpr, ROWS: tl.constexpr, ROWS_PER_PROGRAM: tl.constexpr,
                                BLOCK_H: tl.constexpr):
    cols = tl.arange(0, BLOCK_H)
    w = tl.load(w_ptr + cols, mask=cols < hidden, other=0.0).to(tl.float32)
    n = tl.cast(hidden, tl.float64)
    dw = tl.zeros([ROWS, BLOCK_H], dtype=tl.float64)  # reduced over rows once, after the loop
    db = tl.zeros([ROWS, BLOCK_H], dtype=tl.float64)
    for start in range(0, ROWS_PER_PROGRAM, ROWS):
        first = tl.program_id(0) * ROWS_PER_PROGRAM + start
        rows = first + tl.arange(0, ROWS)
        mask = (rows[:, None] < n_rows) & (cols[None, :] < hidden)
        base = tl.cast(first, tl.int64) * hidden  # a 64-bit tile base and 32-bit offsets: fewer live registers
        local = tl.arange(0, ROWS)[:, None] * hidden + cols[None, :]
        x = tl.load(x_ptr + base + local, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(grad_ptr + base + local, mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(mean_ptr + rows, mask=rows < n_rows, other=0.0)
        rstd = tl.load(rstd_ptr + rows, mask=rows < n_rows, other=0.0)
        xhat = (x - mean[:, None]) * rstd[:, None]  # padding has g = 0, so it adds nothing below
        gw = g * w[None, :]
        c1 = (tl.sum((gw * xhat).to(tl.float64), axis=1) / n).to(tl.float32)
        c2 = (tl.sum(gw.to(tl.float64), axis=1) / n).to(tl.float32)
        dx = rstd[:, None] * ((gw - xhat * c1[:, None]) - c2[:, None])
        tl.store(dx_ptr + base + local, _round_to_dtype(dx, dx_ptr.dtype.element_ty), mask=mask)
        dw += (g * xhat).to(tl.float64)
        if HAS_BIAS:
            db += g.to(tl.float64)
    partial = tl.program_id(0) * hidden + cols
    tl.store(dw_ptr + partial, tl.sum(dw, axis=0), mask=cols < hidden)
    if HAS_BIAS:
        tl.store(db_ptr + partial, tl.sum(db, axis=0), mask=cols < hidden)


def layer_norm_backward_warps(block_h: int) -> int:
    """4 elements of a row per thread: the two float64 weight-gradient accumulators need the registers."""
    return max(4, min(32, block_h // 128))


def norm_backward_grid(n_rows: int, hidden: int) -> tuple[int, int, int]:
    """(row tile, rows per program, programs) for the norms' backward, whose programs each write one float64
    partial of the weight gradient: a few hundred programs at most, so the partials stay small."""
    rows, block_h = _norm_rows(n_rows, hidden)
    per_program = max(rows, triton.next_power_of_2(-(-n_rows // 256)))
    per_program = -(-per_program // rows) * rows
    return rows, per_program, triton.cdiv(n_rows, per_program)


def layer_norm_forward(x2d, weight, bias, eps):
    n_rows, hidden = x2d.shape
    out = torch.empty_like(x2d)
    mean = torch.empty(n_rows, dtype=torch.float32, device=x2d.device)
    rstd = torch.empty_like(mean)
    rows, block_h = _norm_rows(n_rows, hidden)
    has_bias = bias is not None
    _layer_norm_forward_kernel[(triton.cdiv(n_rows, rows),)](x2d, weight, bias if has_bias else weight, out, mean,
                                                             rstd, n_rows, hidden, eps, HAS_BIAS=has_bias, ROWS=rows,
                                                             BLOCK_H=block_h, num_warps=norm_warps(block_h))
    return out, mean, rstd


def layer_norm_backward(grad2d, x2d, weight, mean, rstd, has_bias):
    """dx, and the float64 partials of dw and db, one row per program (the caller sums them)."""
    n_rows, hidden = x2d.shape
    dx = torch.empty_like(x2d)
    rows, per_program, programs = norm_backward_grid(n_rows, hidden)
    dw = torch.empty(programs, hidden, dtype=torch.float64, device=x2d.device)
    db = torch.empty_like(dw) if has_bias else dw
    block_h = triton.next_power_of_2(hidden)
    _layer_norm_backward_kernel[(programs,)](grad2d, x2d, weight, mean, rstd, dx, dw, db, n_rows, hidden,
                                             HAS_BIAS=has_bias, ROWS=rows, ROWS_PER_PROGRAM=per_program,
                                             BLOCK_H=block_h, num_warps=layer_norm_backward_warps(block_h))
    return dx, dw, db if has_bias else None


# Rotary embedding (effplug.kernels.rope): rows (b, h, s) of x and out, each with its own strides (the last is
# 1); cos and sin broadcast over heads through stride 0. fp32 products, rounded once to the dtype.
@triton.jit
def _rope_kernel(x_ptr, out_ptr, cos_ptr, sin_ptr, n_rows, heads, seq, half, sx_b, sx_h, sx_s, so_b, so_h, so_s,
                 sc_b, sc_h, sc_s, BACKWARD: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < n_rows) & (cols[None, :] < half)
    r = tl.cast(rows, tl.int64)
    b = r // (heads * seq)
    h = (r // seq) % heads
    t = r % seq
    x_base = (b * sx_b + h * sx_h + t * sx_s)[:, None] + cols[None, :]
    o_base = (b * so_b + h * so_h + t * so_s)[:, None] + cols[None, :]
    c_base = (b * sc_b + h * sc_h + t * sc_s)[:, None] + cols[None, :]
    x1 = tl.load(x_ptr + x_base, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_ptr + x_base + half, mask=mask, other=0.0).to(tl.float32)
    c1 = tl.load(cos_ptr + c_base, mask=mask, other=0.0).to(tl.float32)
    c2 = tl.load(cos_ptr + c_base + half, mask=mask, other=0.0).to(tl.float32)
    s1 = tl.load(sin_ptr + c_base, mask=mask, other=0.0).to(tl.float32)
    s2 = tl.load(sin_ptr + c_base + half, mask=mask, other=0.0).to(tl.float32)
    if BACKWARD:  # the transpose of the rotation
        y1 = x1 * c1 + x2 * s2
        y2 = x2 * c2 - x1 * s1
    else:
        y1 = x1 * c1 - x2 * s1
        y2 = x2 * c2 + x1 * s2
    tl.store(out_ptr + o_base, _round_to_dtype(y1, out_ptr.dtype.element_ty), mask=mask)
    tl.store(out_ptr + o_base + half, _round_to_dtype(y2, out_ptr.dtype.element_ty), mask=mask)


def rope(x, out, cos, sin, backward):
    """``x`` and ``out`` (B, H, S, D) with unit last stride, ``cos``/``sin`` broadcast to that shape."""
    batch, heads, seq, dim = x.shape
    n_rows, half = batch * heads * seq, dim // 2
    block_d = triton.next_power_of_2(max(half, 1))
    per_program = 8192 if triton_interpreting() else 512  # elements of each half per program
    rows = max(1, min(triton.next_power_of_2(n_rows), per_program // block_d))
    _rope_kernel[(triton.cdiv(n_rows, rows),)](x, out, cos, sin, n_rows, heads, seq, half, *x.stride()[:3],
                                               *out.stride()[:3], *cos.stride()[:3], BACKWARD=backward, ROWS=rows,
                                               BLOCK_D=block_d)
    return out


# SwiGLU (effplug.kernels.swiglu): elementwise, in float64, rounded once to fp32 then to the dtype.
@triton.jit
def _swiglu_forward_kernel(a_ptr, b_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    a = tl.load(a_ptr + offs, mask=mask, other=0.0).to(tl.float32).to(tl.float64)
    b = tl.load(b_ptr + offs, mask=mask, other=0.0).to(tl.float32).to(tl.float64)
    s = 1.0 / (1.0 + tl.exp(-a))
    tl.store(out_ptr + offs, _round_to_dtype((a * s * b).to(tl.float32), out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_backward_kernel(grad_ptr, a_ptr, b_ptr, da_ptr, db_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(tl.float32).to(tl.float64)
    a = tl.load(a_ptr + offs, mask=mask, other=0.0).to(tl.float32).to(tl.float64)
    b = tl.load(b_ptr + offs, mask=mask, other=0.0).to(tl.float32).to(tl.float64)
    s = 1.0 / (1.0 + tl.exp(-a))
    da = g * b * s * (1.0 + a * (1.0 - s))
    db = g * a * s
    tl.store(da_ptr + offs, _round_to_dtype(da.to(tl.float32), da_ptr.dtype.element_ty), mask=mask)
    tl.store(db_ptr + offs, _round_to_dtype(db.to(tl.float32), db_ptr.dtype.element_ty), mask=mask)


def swiglu_forward(a, b):
    n = a.numel()
    out = torch.empty_like(a)
    block = interpreter_block(n, gpu_block=ELEMENTWISE_BLOCK)
    _swiglu_forward_kernel[(triton.cdiv(n, block),)](a, b, out, n, BLOCK=block)
    return out


def swiglu_backward(grad, a, b):
    n = a.numel()
    da, db = torch.empty_like(a), torch.empty_like(b)
    block = interpreter_block(n, gpu_block=ELEMENTWISE_BLOCK)
    _swiglu_backward_kernel[(triton.cdiv(n, block),)](grad, a, b, da, db, n, BLOCK=block)
    return da, db


# Cross-entropy rows (effplug.kernels.linear_cross_entropy): one row of fp32 logits per program, BLOCK_V at a
# time. Pass 1: the max, then Σ exp(z − max) and Σ z in float64. Pass 2 overwrites the logits with the loss's
# gradient. Ignored rows get loss 0 and gradient 0.
CE_BLOCK_V = 1024


@triton.jit
def _cross_entropy_rows_kernel(z_ptr, target_ptr, loss_ptr, lse_ptr, vocab, stride, ignore_index, smoothing,
                               z_loss, grad_scale, BLOCK_V: tl.constexpr):
    row = tl.program_id(0)
    base = z_ptr + tl.cast(row, tl.int64) * stride
    target = tl.load(target_ptr + row)
    cols = tl.arange(0, BLOCK_V)
    peak = tl.full((BLOCK_V,), float("-inf"), tl.float32)
    for start in range(0, vocab, BLOCK_V):
        z = tl.load(base + start + cols, mask=start + cols < vocab, other=float("-inf"))
        peak = tl.maximum(peak, z)
    m = tl.max(peak, axis=0)
    m64 = m.to(tl.float64)
    exp_sum = tl.zeros((BLOCK_V,), tl.float64)
    z_sum = tl.zeros((BLOCK_V,), tl.float64)
    for start in range(0, vocab, BLOCK_V):
        valid = start + cols < vocab
        z = tl.load(base + start + cols, mask=valid, other=0.0).to(tl.float64)
        exp_sum += tl.where(valid, tl.exp(z - m64), 0.0)
        z_sum += z
    lse = m64 + tl.log(tl.sum(exp_sum, axis=0))
    eps64 = tl.cast(smoothing, tl.float64)
    lam = tl.cast(z_loss, tl.float64)
    ignored = target == ignore_index
    safe_target = tl.where(ignored, 0, target)
    z_target = tl.load(base + safe_target).to(tl.float64)
    uniform = eps64 / tl.cast(vocab, tl.float64)
    loss = lse - (1.0 - eps64) * z_target - uniform * tl.sum(z_sum, axis=0) + lam * lse * lse
    tl.store(loss_ptr + row, tl.where(ignored, 0.0, loss.to(tl.float32)))
    tl.store(lse_ptr + row, lse.to(tl.float32))
    scale = tl.where(ignored, 0.0, tl.cast(grad_scale, tl.float64))
    total = tl.sum(exp_sum, axis=0)
    softmax_scale = 1.0 + 2.0 * lam * lse
    for start in range(0, vocab, BLOCK_V):
        index = start + cols
        valid = index < vocab
        z = tl.load(base + index, mask=valid, other=0.0).to(tl.float64)
        grad = tl.exp(z - m64) / total * softmax_scale - uniform - tl.where(index == safe_target, 1.0 - eps64, 0.0)
        tl.store(base + index, (grad * scale).to(tl.float32), mask=valid)


def cross_entropy_rows(logits, target, ignore_index, smoothing, z_loss, grad_scale):
    rows, vocab = logits.shape
    loss = torch.empty(rows, dtype=torch.float32, device=logits.device)
    lse = torch.empty(rows, dtype=torch.float32, device=logits.device)
    block = min(CE_BLOCK_V, triton.next_power_of_2(vocab))
    _cross_entropy_rows_kernel[(rows,)](logits, target, loss, lse, vocab, logits.stride(0), ignore_index, smoothing,
                                        z_loss, grad_scale, BLOCK_V=block)
    return loss, lse


# GELU and GeGLU (effplug.kernels.gelu): elementwise in float64, rounded once. The constants are fp32-exact
# (effplug.kernels.gelu.CONSTANTS), so a literal means the same number on every backend.
@triton.jit
def _gelu_value_and_slope(a, TANH: tl.constexpr):
    if TANH:
        u = 0.7978845834732056 * (a + 0.044714998453855515 * (a * a * a))
        t = 1.0 - 2.0 / (tl.exp(2.0 * u) + 1.0)
        value = 0.5 * a * (1.0 + t)
        slope = 0.5 * (1.0 + t) + 0.5 * a * (1.0 - t * t) * 0.7978845834732056 * (1.0 + 0.13414500653743744 * (a * a))
    else:
        z = tl.abs(a) * 0.7071067690849304
        t = 1.0 / (1.0 + 0.5 * z)
        p = 0.170872762799263
        p = -0.8221522569656372 + t * p
        p = 1.488515853881836 + t * p
        p = -1.1352039575576782 + t * p
        p = 0.27886807918548584 + t * p
        p = -0.18628805875778198 + t * p
        p = 0.09678418189287186 + t * p
        p = 0.3740919530391693 + t * p
        p = 1.0000237226486206 + t * p
        half_erfc = 0.5 * (t * tl.exp(-z * z - 1.265512228012085 + t * p))
        phi = tl.where(a < 0.0, half_erfc, 1.0 - half_erfc)
        value = a * phi
        slope = phi + a * tl.exp(-0.5 * (a * a)) * 0.3989422917366028
    return value, slope


@triton.jit
def _gelu_forward_kernel(a_ptr, b_ptr, out_ptr, n, TANH: tl.constexpr, GATED: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    a = tl.load(a_ptr + offs, mask=mask, other=0.0).to(tl.float32).to(tl.float64)
    value, slope = _gelu_value_and_slope(a, TANH)
    if GATED:
        value = value * tl.load(b_ptr + offs, mask=mask, other=0.0).to(tl.float32).to(tl.float64)
    tl.store(out_ptr + offs, _round_to_dtype(value.to(tl.float32), out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gelu_backward_kernel(grad_ptr, a_ptr, b_ptr, da_ptr, db_ptr, n, TANH: tl.constexpr, GATED: tl.constexpr,
                          BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(tl.float32).to(tl.float64)
    a = tl.load(a_ptr + offs, mask=mask, other=0.0).to(tl.float32).to(tl.float64)
    value, slope = _gelu_value_and_slope(a, TANH)
    if GATED:
        b = tl.load(b_ptr + offs, mask=mask, other=0.0).to(tl.float32).to(tl.float64)
        tl.store(db_ptr + offs, _round_to_dtype((g * value).to(tl.float32), db_ptr.dtype.element_ty), mask=mask)
        g = g * b
    tl.store(da_ptr + offs, _round_to_dtype((g * slope).to(tl.float32), da_ptr.dtype.element_ty), mask=mask)


def gelu_forward(a, b, tanh):
    n = a.numel()
    out = torch.empty_like(a)
    block = interpreter_block(n, gpu_block=ELEMENTWISE_BLOCK)
    _gelu_forward_kernel[(triton.cdiv(n, block),)](a, a if b is None else b, out, n, TANH=tanh, GATED=b is not None,
                                                   BLOCK=block)
    return out


def gelu_backward(grad, a, b, tanh):
    n = a.numel()
    da = torch.empty_like(a)
    db = None if b is None else torch.empty_like(b)
    block = interpreter_block(n, gpu_block=ELEMENTWISE_BLOCK)
    _gelu_backward_kernel[(triton.cdiv(n, block),)](grad, a, a if b is None else b, da, da if db is None else db, n,
                                                    TANH=tanh, GATED=b is not None, BLOCK=block)
    return da, db


# Scaled masked softmax with mask-free dropout (effplug.kernels.softmax): one row of K scores per program.
# Element (row, col) draws dropout word row · W + col, W = K rounded up to 4, so each row starts a Philox counter.
@triton.jit
def _softmax_dropout_forward_kernel(s_ptr, mask_ptr, probs_ptr, out_ptr, n_cols, heads, queries, mask_sb, mask_sh,
                                    mask_sq, mask_sk, scale, seed, p, inv_keep, HAS_MASK: tl.constexpr,
                                    DROPOUT: tl.constexpr, BLOCK_K: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK_K)
    valid = cols < n_cols
    base = tl.cast(row, tl.int64) * n_cols
    s = tl.load(s_ptr + base + cols, mask=valid, other=0.0).to(tl.float32) * tl.cast(scale, tl.float32)
    if HAS_MASK:
        b = row // (heads * queries)
        h = (row // queries) % heads
        q = row % queries
        m_base = b * mask_sb + h * mask_sh + q * mask_sq
        s = s + tl.load(mask_ptr + m_base + cols * mask_sk, mask=valid, other=0.0).to(tl.float32)
    s = tl.where(valid, s, float("-inf"))
    peak = tl.max(s, axis=0).to(tl.float64)
    e = tl.where(valid, tl.exp(s.to(tl.float64) - peak), 0.0)
    y = _round_to_dtype((e / tl.sum(e, axis=0)).to(tl.float32), probs_ptr.dtype.element_ty)
    tl.store(probs_ptr + base + cols, y, mask=valid)
    if DROPOUT:
        width = (n_cols + 3) // 4 * 4
        r = _random_block(seed, tl.cast(row, tl.int64) * width, BLOCK_K)
        keep = tl.cast(r >> 8, tl.float32) * (1.0 / 16777216.0) >= tl.cast(p, tl.float32)
        out = tl.where(keep, y.to(tl.float32) * tl.cast(inv_keep, tl.float32), 0.0)
        tl.store(out_ptr + base + cols, _round_to_dtype(out, out_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _softmax_dropout_backward_kernel(grad_ptr, probs_ptr, ds_ptr, n_cols, scale, seed, p, inv_keep,
                                     DROPOUT: tl.constexpr, BLOCK_K: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK_K)
    valid = cols < n_cols
    base = tl.cast(row, tl.int64) * n_cols
    dy = tl.load(grad_ptr + base + cols, mask=valid, other=0.0).to(tl.float32)
    if DROPOUT:
        width = (n_cols + 3) // 4 * 4
        r = _random_block(seed, tl.cast(row, tl.int64) * width, BLOCK_K)
        keep = tl.cast(r >> 8, tl.float32) * (1.0 / 16777216.0) >= tl.cast(p, tl.float32)
        dy = tl.where(keep, dy * tl.cast(inv_keep, tl.float32), 0.0)
    y = tl.load(probs_ptr + base + cols, mask=valid, other=0.0).to(tl.float32).to(tl.float64)
    dy64 = dy.to(tl.float64)
    dot = tl.sum(dy64 * y, axis=0)
    ds = (y * (dy64 - dot) * tl.cast(scale, tl.float32).to(tl.float64)).to(tl.float32)
    tl.store(ds_ptr + base + cols, _round_to_dtype(ds, ds_ptr.dtype.element_ty), mask=valid)


def softmax_dropout_forward(scores, mask, scale, seed, p, out_dtype):
    batch, heads, queries, n_cols = scores.shape
    rows = batch * heads * queries
    probs = torch.empty_like(scores, dtype=out_dtype)
    dropout = p > 0
    out = torch.empty_like(probs) if dropout else probs
    block = triton.next_power_of_2(max(n_cols, 4))
    has_mask = mask is not None
    strides = [mask.stride(i) if mask.shape[i] > 1 else 0 for i in range(4)] if has_mask else [0, 0, 0, 0]
    _softmax_dropout_forward_kernel[(rows,)](scores, mask if has_mask else scores, probs, out, n_cols, heads, queries,
                                             *strides, scale, seed, p, 1.0 / (1.0 - p), HAS_MASK=has_mask,
                                             DROPOUT=dropout, BLOCK_K=block, num_warps=norm_warps(block))
    return probs, out


def softmax_dropout_backward(grad, probs, scale, seed, p, grad_dtype):
    n_cols = probs.shape[-1]
    rows = probs.numel() // n_cols
    ds = torch.empty_like(probs, dtype=grad_dtype)
    block = triton.next_power_of_2(max(n_cols, 4))
    _softmax_dropout_backward_kernel[(rows,)](grad, probs, ds, n_cols, scale, seed, p, 1.0 / (1.0 - p),
                                              DROPOUT=p > 0, BLOCK_K=block, num_warps=norm_warps(block))
    return ds


# Channel statistics (effplug.kernels.channel_stats): per-channel min/max in one read, and OCTAV's tail sum and
# count. Each program writes a partial; torch combines them (min/max exactly, the float64 sums rounded once).
STATS_BLOCK = 1024


@triton.jit
def _min_max_rows_kernel(x_ptr, lo_ptr, hi_ptr, nan_ptr, n_rows, channels, ROWS: tl.constexpr,
                         ROWS_PER_PROGRAM: tl.constexpr, BLOCK_C: tl.constexpr):
    """x as [rows, channels] (the channel is the last dim): partial min/max per block of rows."""
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    lo = tl.full([BLOCK_C], float("inf"), tl.float32)
    hi = tl.full([BLOCK_C], float("-inf"), tl.float32)
    nans = tl.zeros([BLOCK_C], dtype=tl.int32)
    for start in range(0, ROWS_PER_PROGRAM, ROWS):
        rows = tl.program_id(0) * ROWS_PER_PROGRAM + start + tl.arange(0, ROWS)
        mask = (rows[:, None] < n_rows) & (cols[None, :] < channels)
        x = tl.load(x_ptr + tl.cast(rows, tl.int64)[:, None] * channels + cols[None, :], mask=mask,
                    other=0.0).to(tl.float32)
        nan = mask & (x != x)
        lo = tl.minimum(lo, tl.min(tl.where(mask & ~nan, x, float("inf")), axis=0))
        hi = tl.maximum(hi, tl.max(tl.where(mask & ~nan, x, float("-inf")), axis=0))
        nans += tl.sum(nan.to(tl.int32), axis=0)
    out = tl.program_id(0) * channels + cols
    tl.store(lo_ptr + out, lo, mask=cols < channels)
    tl.store(hi_ptr + out, hi, mask=cols < channels)
    tl.store(nan_ptr + out, nans, mask=cols < channels)


@triton.jit
def _min_max_inner_kernel(x_ptr, lo_ptr, hi_ptr, nan_ptr, inner, BLOCK: tl.constexpr):
    """x as [outer·channels, inner]: partial min/max of a chunk of one (outer, channel) run."""
    run = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < inner
    x = tl.load(x_ptr + tl.cast(run, tl.int64) * inner + offs, mask=mask, other=0.0).to(tl.float32)
    nan = mask & (x != x)
    out = run * tl.num_programs(1) + tl.program_id(1)
    tl.store(lo_ptr + out, tl.min(tl.where(mask & ~nan, x, float("inf")), axis=0))
    tl.store(hi_ptr + out, tl.max(tl.where(mask & ~nan, x, float("-inf")), axis=0))
    tl.store(nan_ptr + out, tl.sum(nan.to(tl.int32), axis=0))


@triton.jit
def _octav_tail_kernel(m_ptr, clip_ptr, tail_ptr, count_ptr, n, BLOCK: tl.constexpr):
    """|x| rows [R, n]: for a chunk of row r, Σ|x|·1{|x| > clip_r} (float64) and #{|x| > clip_r}."""
    row = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    m = tl.load(m_ptr + tl.cast(row, tl.int64) * n + offs, mask=mask, other=0.0)
    outside = mask & (m > tl.load(clip_ptr + row))
    out = row * tl.num_programs(1) + tl.program_id(1)
    tl.store(tail_ptr + out, tl.sum(tl.where(outside, m, 0.0).to(tl.float64), axis=0))
    tl.store(count_ptr + out, tl.sum(outside.to(tl.int32), axis=0))


def min_max_partials(x, outer, channels, inner):
    """Partial (lo, hi, nan count) with the channel on dim 1 of the result: [parts, channels] each."""
    if inner == 1:
        block_c = min(triton.next_power_of_2(channels), 256)
        rows = max(1, min(triton.next_power_of_2(outer), STATS_BLOCK // block_c * (8 if triton_interpreting() else 1)))
        per_program = max(rows, triton.next_power_of_2(-(-outer // 256)))  # at most ~256 partial rows
        grid = (triton.cdiv(outer, per_program), triton.cdiv(channels, block_c))
        lo = torch.empty(grid[0], channels, dtype=torch.float32, device=x.device)
        hi, nan = torch.empty_like(lo), torch.empty(grid[0], channels, dtype=torch.int32, device=x.device)
        _min_max_rows_kernel[grid](x, lo, hi, nan, outer, channels, ROWS=rows, ROWS_PER_PROGRAM=per_program,
                                   BLOCK_C=block_c)
        return lo, hi, nan
    block = min(triton.next_power_of_2(inner), STATS_BLOCK * (8 if triton_interpreting() else 1))
    chunks = triton.cdiv(inner, block)
    lo = torch.empty(outer * channels * chunks, dtype=torch.float32, device=x.device)
    hi, nan = torch.empty_like(lo), torch.empty(lo.shape, dtype=torch.int32, device=x.device)
    _min_max_inner_kernel[(outer * channels, chunks)](x, lo, hi, nan, inner, BLOCK=block)
    shape = (outer, channels, chunks)
    return (t.view(shape).transpose(0, 1).reshape(channels, -1).t() for t in (lo, hi, nan))


def octav_tail(magnitude, clip):
    rows, n = magnitude.shape
    block = min(triton.next_power_of_2(n), STATS_BLOCK * (8 if triton_interpreting() else 1))
    chunks = triton.cdiv(n, block)
    tail = torch.empty(rows, chunks, dtype=torch.float64, device=magnitude.device)
    count = torch.empty(rows, chunks, dtype=torch.int32, device=magnitude.device)
    _octav_tail_kernel[(rows, chunks)](magnitude, clip, tail, count, n, BLOCK=block)
    return tail, count


# -- COMET's error-bounded codes (kernels/error_bounded.py) -------------------------------------------


@triton.jit
def _bounded_codes(x_ptr, zero, n, step, rows, GROUP: tl.constexpr):
    """fp32 x of the group rows (positions past ``n`` repeat the last value, so pad codes stay in range) and
    their linear-scaling codes ``floor((x - zero) / step + 0.5)``; ``zero`` per row."""
    offs = rows[:, None] * GROUP + tl.arange(0, GROUP)[None, :]
    x = tl.load(x_ptr + tl.minimum(offs, n - 1)).to(tl.float32)
    return offs, x, tl.floor((x - zero[:, None]) / step + 0.5)


@triton.jit
def _error_bounded_stats_kernel(x_ptr, zero_ptr, top_ptr, err_ptr, n, n_groups, step,
                                GROUP: tl.constexpr, ROWS: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    offs = rows[:, None] * GROUP + tl.arange(0, GROUP)[None, :]
    x = tl.load(x_ptr + tl.minimum(offs, n - 1)).to(tl.float32)  # as _bounded_codes loads it
    zero = tl.min(x, axis=1)
    q = tl.floor((x - zero[:, None]) / step + 0.5)
    x_hat = _round_to_dtype(zero[:, None] + q * step, x_ptr.dtype.element_ty).to(tl.float32)  # what decode gives
    err = tl.abs(x_hat - x)
    bad = (err != err) | (tl.abs(x) == float("inf"))  # NaN compares unequal; the maximum must not skip it
    err = tl.max(tl.where(bad, float("inf"), err), axis=1)
    row_ok = rows < n_groups
    tl.store(zero_ptr + rows, zero, mask=row_ok)
    tl.store(top_ptr + rows, tl.max(q, axis=1), mask=row_ok)
    tl.store(err_ptr + rows, err, mask=row_ok)


@triton.jit
def _error_bounded_pack_kernel(x_ptr, zero_ptr, out_ptr, n, n_groups, step,
                               WIDTH: tl.constexpr, GROUP: tl.constexpr, ROWS: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * ROWS + tl.arange(0, ROWS)
    row_ok = rows < n_groups
    zero = tl.load(zero_ptr + rows, mask=row_ok, other=0.0)
    offs, x, q = _bounded_codes(x_ptr, zero, n, step, rows, GROUP)
    if WIDTH == 16:
        tl.store(out_ptr + offs, (q - 32768.0).to(tl.int16), mask=row_ok[:, None])
    else:
        PER: tl.constexpr = 8 // WIDTH
        q = tl.reshape(q.to(tl.int32), (ROWS * GROUP // PER, PER))
        packed = tl.sum(q << (tl.arange(0, PER) * WIDTH)[None, :], axis=1)
        byte_offs = pid * (ROWS * GROUP // PER) + tl.arange(0, ROWS * GROUP // PER)
        tl.store(out_ptr + byte_offs, packed.to(tl.uint8), mask=byte_offs < n_groups * (GROUP // PER))


@triton.jit
def _error_bounded_decode_kernel(data_ptr, zero_ptr, out_ptr, n, n_groups, step,
                                 WIDTH: tl.constexpr, GROUP: tl.constexpr, ROWS: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    offs = rows[:, None] * GROUP + tl.arange(0, GROUP)[None, :]
    row_ok = rows < n_groups
    if WIDTH == 16:
        q = tl.load(data_ptr + offs, mask=row_ok[:, None], other=0).to(tl.float32) + 32768.0
    else:
        PER: tl.constexpr = 8 // WIDTH
        byte = tl.load(data_ptr + offs // PER, mask=row_ok[:, None], other=0).to(tl.int32)
        q = ((byte >> ((offs % PER) * WIDTH)) & ((1 << WIDTH) - 1)).to(tl.float32)
    zero = tl.load(zero_ptr + rows, mask=row_ok, other=0.0)
    tl.store(out_ptr + offs, _round_to_dtype(zero[:, None] + q * step, out_ptr.dtype.element_ty), mask=offs < n)


def _bounded_grid(n_groups, group_size):
    rows = _rows_per_program(n_groups, group_size)
    return rows, (triton.cdiv(n_groups, rows),)


def error_bounded_stats(flat, step, group_size):
    n = flat.numel()
    n_groups = -(-n // group_size)
    zero = torch.empty(n_groups, dtype=torch.float32, device=flat.device)
    top, err = torch.empty_like(zero), torch.empty_like(zero)
    rows, grid = _bounded_grid(n_groups, group_size)
    _error_bounded_stats_kernel[grid](flat, zero, top, err, n, n_groups, step, GROUP=group_size, ROWS=rows)
    return zero, top, err


def error_bounded_pack(flat, zero, step, group_size, width):
    n_groups = zero.numel()
    codes = n_groups * group_size
    out = (torch.empty(codes, dtype=torch.int16, device=flat.device) if width == 16
           else torch.empty(codes * width // 8, dtype=torch.uint8, device=flat.device))
    rows, grid = _bounded_grid(n_groups, group_size)
    _error_bounded_pack_kernel[grid](flat, zero, out, flat.numel(), n_groups, step, WIDTH=width, GROUP=group_size,
                                     ROWS=rows)
    return out


def error_bounded_decode(data, zero, step, group_size, width, n, dtype):
    n_groups = zero.numel()
    out = torch.empty(n, dtype=dtype, device=data.device)
    rows, grid = _bounded_grid(n_groups, group_size)
    _error_bounded_decode_kernel[grid](data, zero, out, n, n_groups, step, WIDTH=width, GROUP=group_size, ROWS=rows)
    return out


# -- DIVISION's low-pass residual (kernels/lowpass.py) ------------------------------------------------


@triton.jit
def _lowpass_at(lfc_ptr, offs, mask, h, w, kh, kw, hl, wl):
    """The low-pass value upsampled to map position ``offs`` of a [B, C, h, w] map (block ``kh x kw``)."""
    col = offs % w
    row = (offs // w) % h
    plane = offs // (h * w)
    return tl.load(lfc_ptr + plane * (hl * wl) + (row // kh) * wl + col // kw, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _lowpass_residual_quantize_kernel(
    x_ptr, lfc_ptr, data_ptr, scale_ptr, zero_ptr, n, n_groups, seed, h, w, kh, kw, hl, wl,
    BITS: tl.constexpr, GROUP: tl.constexpr, ROWS: tl.constexpr,
    STOCHASTIC: tl.constexpr, SCALE_DTYPE: tl.constexpr,
):
    pid = tl.program_id(0)
    rows, offs, valid, x = _load_group_rows(x_ptr, n, pid, GROUP, ROWS)
    x = x - _lowpass_at(lfc_ptr, offs, valid, h, w, kh, kw, hl, wl)  # the prologue: the high-frequency part
    _quantize_rows(x, valid, pid, rows, data_ptr, scale_ptr, zero_ptr, n_groups, seed,
                   BITS, GROUP, ROWS, STOCHASTIC, SCALE_DTYPE)


@triton.jit
def _lowpass_residual_dequantize_kernel(
    data_ptr, scale_ptr, zero_ptr, lfc_ptr, out_ptr, n, n_groups, h, w, kh, kw, hl, wl,
    BITS: tl.constexpr, GROUP: tl.constexpr, ROWS: tl.constexpr,
):
    offs, x = _dequantize_group_rows(data_ptr, scale_ptr, zero_ptr, n_groups, tl.program_id(0), BITS, GROUP, ROWS)
    valid = offs < n
    x = x + _lowpass_at(lfc_ptr, offs, valid, h, w, kh, kw, hl, wl)
    tl.store(out_ptr + offs, _round_to_dtype(x, out_ptr.dtype.element_ty), mask=valid)


def lowpass_residual_quantize(x_map, lfc, window, bits, group_size, stochastic, seed, scale_dtype):
    n = x_map.numel()
    n_groups = -(-n // group_size)
    data = torch.empty(n_groups * group_size * bits // 8, dtype=torch.uint8, device=x_map.device)
    scale = torch.empty(n_groups, dtype=scale_dtype, device=x_map.device)
    zero = torch.empty(n_groups, dtype=scale_dtype, device=x_map.device)
    rows = _rows_per_program(n_groups, group_size)
    h, w = x_map.shape[-2:]
    _lowpass_residual_quantize_kernel[(triton.cdiv(n_groups, rows),)](
        x_map, lfc, data, scale, zero, n, n_groups, seed, h, w, *window, *lfc.shape[-2:],
        BITS=bits, GROUP=group_size, ROWS=rows, STOCHASTIC=stochastic, SCALE_DTYPE=_TL_DTYPE[scale_dtype],
    )
    return data, scale, zero


def lowpass_residual_dequantize(qt, lfc, window, map_shape, out_dtype):
    n_groups = qt.scale.numel()
    out = torch.empty(map_shape, dtype=out_dtype, device=qt.device)
    # half the group kernels' block: the index arithmetic of the upsampling needs registers (compile_tier)
    rows = max(1, _rows_per_program(n_groups, qt.group_size) // (1 if triton_interpreting() else 2))
    _lowpass_residual_dequantize_kernel[(triton.cdiv(n_groups, rows),)](
        qt.data, qt.scale, qt.zero, lfc, out, out.numel(), n_groups, *map_shape[-2:], *window, *lfc.shape[-2:],
        BITS=qt.bits, GROUP=qt.group_size, ROWS=rows,
    )
    return out


# -- 1-bit masks of the lossless payloads (kernels/bitmask.py) -----------------------------------------

MASK_BLOCK = 4096  # elements (512 bytes) per program


@triton.jit
def _pack_mask_kernel(x_ptr, data_ptr, top_ptr, low_ptr, nan_ptr, n, POSITIVE: tl.constexpr, STATS: tl.constexpr,
                      BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    valid = offs < n
    x = tl.load(x_ptr + offs, mask=valid, other=0)
    bit = (x > 0) if POSITIVE else (x != 0)
    bits = tl.reshape(bit.to(tl.int32), (BLOCK // 8, 8))
    packed = tl.sum(bits << tl.arange(0, 8)[None, :], axis=1)
    byte_offs = pid * (BLOCK // 8) + tl.arange(0, BLOCK // 8)
    tl.store(data_ptr + byte_offs, packed.to(tl.uint8), mask=byte_offs < (n + 7) // 8)
    if STATS:  # the two-level test: the maximum, the smallest nonzero value, and whether a NaN is there
        v = x.to(tl.float32)
        tl.store(top_ptr + pid, tl.max(tl.where(valid, v, float("-inf")), axis=0))
        tl.store(low_ptr + pid, tl.min(tl.where(valid & (v != 0), v, float("inf")), axis=0))
        tl.store(nan_ptr + pid, tl.sum((valid & (v != v)).to(tl.int32), axis=0))


@triton.jit
def _unpack_mask_kernel(data_ptr, src_ptr, out_ptr, n, floor, MODE: tl.constexpr, BLOCK: tl.constexpr):
    """MODE 0: the bits as bools; 1: ``bit ? src[0] : 0``; 2: ``bit ? max(src, floor) : 0`` (a rectified
    payload: decoded positives stay positive)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < n
    bit = ((tl.load(data_ptr + offs // 8, mask=valid, other=0).to(tl.int32) >> (offs % 8)) & 1) != 0
    if MODE == 0:
        tl.store(out_ptr + offs, bit.to(tl.uint8), mask=valid)
    else:
        if MODE == 1:
            v = tl.load(src_ptr + offs * 0, mask=valid, other=0.0).to(tl.float32)
        else:
            v = tl.load(src_ptr + offs, mask=valid, other=0.0).to(tl.float32)
            v = tl.where(v < floor, floor, v)  # a NaN stays NaN, as clamp_min keeps it
        tl.store(out_ptr + offs, tl.where(bit, v, 0.0).to(out_ptr.dtype.element_ty), mask=valid)


def pack_mask(x, positive, stats):
    n = x.numel()
    block = interpreter_block(n, gpu_block=MASK_BLOCK)
    grid = (triton.cdiv(n, block),)
    data = torch.empty((n + 7) // 8, dtype=torch.uint8, device=x.device)
    top = torch.empty(grid[0] if stats else 1, dtype=torch.float32, device=x.device)
    low, nan = torch.empty_like(top), torch.empty(top.shape, dtype=torch.int32, device=x.device)
    _pack_mask_kernel[grid](x, data, top, low, nan, n, POSITIVE=positive, STATS=stats, BLOCK=block)
    return data, top, low, nan


def unpack_mask(data, src, out, n, floor, mode):
    block = interpreter_block(n, gpu_block=MASK_BLOCK)
    _unpack_mask_kernel[(triton.cdiv(n, block),)](data, src, out, n, floor, MODE=mode, BLOCK=block)
    return out


# -- calibration's gradient error (kernels/grad_error.py) ----------------------------------------------


@triton.jit
def _squared_error_kernel(a_ptr, b_ptr, err_ptr, ref_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    b = tl.load(b_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    d = (tl.load(a_ptr + offs, mask=mask, other=0.0).to(tl.float32) - b).to(tl.float64)
    b = b.to(tl.float64)
    tl.store(err_ptr + tl.program_id(0), tl.sum(d * d, axis=0))  # squares of fp32 values are exact in fp64
    tl.store(ref_ptr + tl.program_id(0), tl.sum(b * b, axis=0))


def squared_error(a, b):
    n = b.numel()
    block = interpreter_block(n, gpu_block=STATS_BLOCK)
    parts = triton.cdiv(n, block)
    err = torch.empty(parts, dtype=torch.float64, device=b.device)
    ref = torch.empty_like(err)
    _squared_error_kernel[(parts,)](a, b, err, ref, n, BLOCK=block)
    return err, ref
