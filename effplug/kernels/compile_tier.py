"""The ahead-of-time compile tier: every Triton kernel variant the dispatch can launch, compiled for NVIDIA
targets on any machine (no GPU needed), with its registers, spills, shared memory and instruction count.

``triton.compile(ASTSource(kernel, signature, constexprs), target=GPUTarget("cuda", 80|90, 32))`` gives a cubin;
the wheel's ``cuobjdump`` reads its resource usage and SASS. The interpreter (``TRITON_INTERPRET=1``) proves
semantics; this proves that the kernels compile and fit. ``effplug kernels --compile sm_90`` prints the table.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

# Memory-bound kernels should stay at or under this many registers (no spills anywhere).
REGISTER_BUDGET = 128
# The spills we know of and accept, with the most bytes allowed and why; any other spill fails make test.
KNOWN_SPILLS = {("_layer_norm_backward_kernel", "sm_90"): (
    16, "H=4096 at 32 warps (a 64-register cap): the two float64 weight-gradient accumulators, which keep dw "
        "and db in the same pass, need ~66; H <= 2048 does not spill")}
_DTYPES = {"fp32": "*fp32", "fp16": "*fp16", "bf16": "*bf16"}



@dataclass(frozen=True)
class Variant:
    kernel: str  # the kernel's function name in effplug.kernels.triton_kernels
    label: str  # what varies: dtype, bits, stochastic
    signature: dict
    constexprs: dict
    num_warps: int = 4  # what the launcher passes


@dataclass
class CompileResult:
    variant: Variant
    target: str
    registers: int
    spill_bytes: int  # stack frame plus local memory
    shared_bytes: int
    instructions: int
    error: str = ""


def _quantize_pack(dtype, bits, stochastic, scale_name):
    import triton.language as tl

    from effplug.kernels.triton_kernels import GROUP_KERNEL_BLOCK

    return Variant("_quantize_pack_kernel", f"{dtype} {bits}-bit {'SR' if stochastic else 'RN'} {scale_name} scales",
                   {"x_ptr": _DTYPES[dtype], "data_ptr": "*u8", "scale_ptr": f"*{scale_name}",
                    "zero_ptr": f"*{scale_name}", "n": "i32", "n_groups": "i32", "seed": "i64", "BITS": "constexpr",
                    "GROUP": "constexpr", "ROWS": "constexpr", "STOCHASTIC": "constexpr", "SCALE_DTYPE": "constexpr"},
                   {"BITS": bits, "GROUP": 128, "ROWS": GROUP_KERNEL_BLOCK // 128, "STOCHASTIC": stochastic,
                    "SCALE_DTYPE": {"fp16": tl.float16, "bf16": tl.bfloat16}[scale_name]})


def _unpack(dtype, bits):
    from effplug.kernels.triton_kernels import GROUP_KERNEL_BLOCK

    return Variant("_unpack_dequantize_kernel", f"{dtype} {bits}-bit",
                   {"data_ptr": "*u8", "scale_ptr": "*bf16", "zero_ptr": "*bf16", "out_ptr": _DTYPES[dtype],
                    "n": "i32", "n_groups": "i32", "BITS": "constexpr", "GROUP": "constexpr", "ROWS": "constexpr"},
                   {"BITS": bits, "GROUP": 128, "ROWS": GROUP_KERNEL_BLOCK // 128})


def _affine(dtype, bits, stochastic):
    from effplug.kernels.triton_kernels import ELEMENTWISE_BLOCK

    return Variant("_quantize_affine_kernel", f"{dtype} {bits}-bit {'SR' if stochastic else 'RN'}",
                   {"x_ptr": _DTYPES[dtype], "codes_ptr": "*u8", "low_ptr": "*fp32", "step_ptr": "*fp32", "n": "i32",
                    "channels": "i32", "inner": "i32", "seed": "i64", "BITS": "constexpr", "STOCHASTIC": "constexpr",
                    "BLOCK": "constexpr"},
                   {"BITS": bits, "STOCHASTIC": stochastic, "BLOCK": ELEMENTWISE_BLOCK})


def _pow2(dtype, codes):
    from effplug.kernels.triton_kernels import POW2_BLOCK

    ptr = _DTYPES[dtype]
    return Variant("_pow2_sr_kernel", f"{dtype} {'codes' if codes else 'values'}",
                   {"x_ptr": ptr, "out_ptr": "*u8" if codes else ptr, "n": "i32", "seed": "i64", "alpha": "fp32",
                    "lo_exp": "i32", "EMIT_CODES": "constexpr", "BLOCK": "constexpr"},
                   {"EMIT_CODES": codes, "BLOCK": POW2_BLOCK})


def _topk_count(dtype):
    from effplug.kernels.triton_kernels import TOPK_BLOCK

    return Variant("_topk_count_kernel", dtype, {"x_ptr": _DTYPES[dtype], "counts_ptr": "*i32", "n": "i32",
                                                  "threshold": "fp32", "BLOCK": "constexpr"},
                   {"BLOCK": TOPK_BLOCK})


def _topk_compact(dtype):
    from effplug.kernels.triton_kernels import TOPK_BLOCK

    ptr = _DTYPES[dtype]
    return Variant("_topk_compact_kernel", dtype,
                   {"x_ptr": ptr, "values_ptr": ptr, "indices_ptr": "*i64", "n": "i32", "threshold": "fp32",
                    "needed_ties": "i64", "above_before_ptr": "*i64", "ties_before_ptr": "*i64", "BLOCK": "constexpr"},
                   {"BLOCK": TOPK_BLOCK})


def _fake_quantize(dtype):
    from effplug.kernels.triton_kernels import ELEMENTWISE_BLOCK

    ptr = _DTYPES[dtype]
    return Variant("_fake_quantize_kernel", dtype,
                   {"x_ptr": ptr, "out_ptr": ptr, "inv_ptr": "*fp32", "scale_ptr": "*fp32", "zero_ptr": "*fp32",
                    "n": "i32", "channels": "i32", "inner": "i32", "qmin": "i32", "qmax": "i32", "BLOCK": "constexpr"},
                   {"BLOCK": ELEMENTWISE_BLOCK})


def _bias_dropout_residual(dtype, has_bias):
    from effplug.kernels.triton_kernels import ELEMENTWISE_BLOCK

    ptr = _DTYPES[dtype]
    return Variant("_bias_dropout_residual_kernel", f"{dtype} {'bias' if has_bias else 'no bias'}",
                   {"x_ptr": ptr, "bias_ptr": ptr, "residual_ptr": ptr, "out_ptr": ptr, "n": "i32", "hidden": "i32",
                    "seed": "i64", "p": "fp32", "scale": "fp32", "HAS_BIAS": "constexpr", "BLOCK": "constexpr"},
                   {"HAS_BIAS": has_bias, "BLOCK": ELEMENTWISE_BLOCK})


def _dropout_backward(dtype):
    from effplug.kernels.triton_kernels import ELEMENTWISE_BLOCK

    ptr = _DTYPES[dtype]
    return Variant("_dropout_backward_kernel", dtype,
                   {"grad_ptr": ptr, "out_ptr": ptr, "n": "i32", "seed": "i64", "p": "fp32", "scale": "fp32",
                    "BLOCK": "constexpr"}, {"BLOCK": ELEMENTWISE_BLOCK})


def _rms_norm(dtype, backward):
    from effplug.kernels.triton_kernels import norm_warps

    ptr = _DTYPES[dtype]
    if backward:
        signature = {"grad_ptr": ptr, "x_ptr": ptr, "w_ptr": ptr, "rstd_ptr": "*fp32", "dx_ptr": ptr, "dw_ptr": "*fp64",
                     "n_rows": "i32", "hidden": "i32", "offset": "fp32", "ROWS": "constexpr",
                     "ROWS_PER_PROGRAM": "constexpr", "BLOCK_H": "constexpr"}
        return Variant("_rms_norm_backward_kernel", f"{dtype} H=4096", signature,
                       {"ROWS": 1, "ROWS_PER_PROGRAM": 32, "BLOCK_H": 4096}, norm_warps(4096))
    signature = {"x_ptr": ptr, "w_ptr": ptr, "out_ptr": ptr, "rstd_ptr": "*fp32", "n_rows": "i32",
                 "hidden": "i32", "eps": "fp32", "offset": "fp32", "ROWS": "constexpr", "BLOCK_H": "constexpr"}
    return Variant("_rms_norm_forward_kernel", f"{dtype} H=4096", signature, {"ROWS": 1, "BLOCK_H": 4096},
                   norm_warps(4096))


def _swiglu(dtype, backward):
    from effplug.kernels.triton_kernels import ELEMENTWISE_BLOCK

    ptr = _DTYPES[dtype]
    if backward:
        return Variant("_swiglu_backward_kernel", dtype,
                       {"grad_ptr": ptr, "a_ptr": ptr, "b_ptr": ptr, "da_ptr": ptr, "db_ptr": ptr, "n": "i32",
                        "BLOCK": "constexpr"}, {"BLOCK": ELEMENTWISE_BLOCK})
    return Variant("_swiglu_forward_kernel", dtype, {"a_ptr": ptr, "b_ptr": ptr, "out_ptr": ptr, "n": "i32",
                                                     "BLOCK": "constexpr"}, {"BLOCK": ELEMENTWISE_BLOCK})


def _gelu(dtype, tanh, gated, backward):
    from effplug.kernels.triton_kernels import ELEMENTWISE_BLOCK

    ptr = _DTYPES[dtype]
    label = f"{dtype} {'tanh' if tanh else 'erf'}{' gated' if gated else ''}"
    constexprs = {"TANH": tanh, "GATED": gated, "BLOCK": ELEMENTWISE_BLOCK}
    if backward:
        return Variant("_gelu_backward_kernel", label,
                       {"grad_ptr": ptr, "a_ptr": ptr, "b_ptr": ptr, "da_ptr": ptr, "db_ptr": ptr, "n": "i32",
                        "TANH": "constexpr", "GATED": "constexpr", "BLOCK": "constexpr"}, constexprs)
    return Variant("_gelu_forward_kernel", label,
                   {"a_ptr": ptr, "b_ptr": ptr, "out_ptr": ptr, "n": "i32", "TANH": "constexpr", "GATED": "constexpr",
                    "BLOCK": "constexpr"}, constexprs)


def _cross_entropy_rows():
    from effplug.kernels.triton_kernels import CE_BLOCK_V

    return Variant("_cross_entropy_rows_kernel", "fp32 logits",
                   {"z_ptr": "*fp32", "target_ptr": "*i64", "loss_ptr": "*fp32", "lse_ptr": "*fp32", "vocab": "i32",
                    "stride": "i32", "ignore_index": "i32", "smoothing": "fp32", "z_loss": "fp32",
                    "grad_scale": "fp32", "BLOCK_V": "constexpr"}, {"BLOCK_V": CE_BLOCK_V})


def _layer_norm(dtype, backward):
    from effplug.kernels.triton_kernels import layer_norm_backward_warps, norm_warps

    ptr = _DTYPES[dtype]
    if backward:
        signature = {"grad_ptr": ptr, "x_ptr": ptr, "w_ptr": ptr, "mean_ptr": "*fp32", "rstd_ptr": "*fp32",
                     "dx_ptr": ptr, "dw_ptr": "*fp64", "db_ptr": "*fp64", "n_rows": "i32", "hidden": "i32",
                     "HAS_BIAS": "constexpr", "ROWS": "constexpr", "ROWS_PER_PROGRAM": "constexpr",
                     "BLOCK_H": "constexpr"}
        constexprs = {"HAS_BIAS": True, "ROWS": 1, "ROWS_PER_PROGRAM": 32, "BLOCK_H": 4096}
    else:
        signature = {"x_ptr": ptr, "w_ptr": ptr, "b_ptr": ptr, "out_ptr": ptr, "mean_ptr": "*fp32",
                     "rstd_ptr": "*fp32", "n_rows": "i32", "hidden": "i32", "eps": "fp32", "HAS_BIAS": "constexpr",
                     "ROWS": "constexpr", "BLOCK_H": "constexpr"}
        constexprs = {"HAS_BIAS": True, "ROWS": 1, "BLOCK_H": 4096}
    kernel = "_layer_norm_backward_kernel" if backward else "_layer_norm_forward_kernel"
    return Variant(kernel, f"{dtype} H=4096", signature, constexprs,
                   layer_norm_backward_warps(4096) if backward else norm_warps(4096))


def _rope(dtype, backward):
    ptr = _DTYPES[dtype]
    block = 64  # head_dim 128
    signature = {"x_ptr": ptr, "out_ptr": ptr, "cos_ptr": ptr, "sin_ptr": ptr, "n_rows": "i32", "heads": "i32",
                 "seq": "i32", "half": "i32", **{f"s{t}_{d}": "i32" for t in "xoc" for d in "bhs"},
                 "BACKWARD": "constexpr", "ROWS": "constexpr", "BLOCK_D": "constexpr"}
    return Variant("_rope_kernel", f"{dtype} D=128{' backward' if backward else ''}", signature,
                   {"BACKWARD": backward, "ROWS": 512 // block, "BLOCK_D": block})


def _channel_stats(kernel, dtype="fp32"):
    from effplug.kernels.triton_kernels import STATS_BLOCK

    ptr = _DTYPES[dtype]
    if kernel == "rows":
        return Variant("_min_max_rows_kernel", f"{dtype} channels last",
                       {"x_ptr": ptr, "lo_ptr": "*fp32", "hi_ptr": "*fp32", "nan_ptr": "*i32", "n_rows": "i32",
                        "channels": "i32", "ROWS": "constexpr", "ROWS_PER_PROGRAM": "constexpr",
                        "BLOCK_C": "constexpr"}, {"ROWS": STATS_BLOCK // 256, "ROWS_PER_PROGRAM": 32, "BLOCK_C": 256})
    if kernel == "inner":
        return Variant("_min_max_inner_kernel", f"{dtype} inner runs",
                       {"x_ptr": ptr, "lo_ptr": "*fp32", "hi_ptr": "*fp32", "nan_ptr": "*i32", "inner": "i32",
                        "BLOCK": "constexpr"}, {"BLOCK": STATS_BLOCK})
    return Variant("_octav_tail_kernel", "fp32 |x| rows",
                   {"m_ptr": "*fp32", "clip_ptr": "*fp32", "tail_ptr": "*fp64", "count_ptr": "*i32", "n": "i32",
                    "BLOCK": "constexpr"}, {"BLOCK": STATS_BLOCK})


def _softmax(dtype, masked, dropout, backward):
    from effplug.kernels.triton_kernels import norm_warps

    ptr, block = _DTYPES[dtype], 1024  # keys up to 1024 in one row block
    label = f"{dtype} K<={block}{' masked' if masked else ''}{' dropout' if dropout else ''}"
    if backward:
        return Variant("_softmax_dropout_backward_kernel", label,
                       {"grad_ptr": ptr, "probs_ptr": ptr, "ds_ptr": ptr, "n_cols": "i32", "scale": "fp32",
                        "seed": "i64", "p": "fp32", "inv_keep": "fp32", "DROPOUT": "constexpr", "BLOCK_K": "constexpr"},
                       {"DROPOUT": dropout, "BLOCK_K": block}, norm_warps(block))
    return Variant("_softmax_dropout_forward_kernel", label,
                   {"s_ptr": ptr, "mask_ptr": ptr, "probs_ptr": ptr, "out_ptr": ptr, "n_cols": "i32", "heads": "i32",
                    "queries": "i32", "mask_sb": "i32", "mask_sh": "i32", "mask_sq": "i32", "mask_sk": "i32",
                    "scale": "fp32", "seed": "i64", "p": "fp32", "inv_keep": "fp32", "HAS_MASK": "constexpr",
                    "DROPOUT": "constexpr", "BLOCK_K": "constexpr"},
                   {"HAS_MASK": masked, "DROPOUT": dropout, "BLOCK_K": block}, norm_warps(block))


def _spmm(vector, bits, split):
    from effplug.kernels.triton_kernels import SPARSE_BLOCK_K, SPARSE_BLOCK_N, SPARSE_TILE_M

    return Variant("_spmm_kernel", f"V={vector} int{bits} x {'int16 (bit split)' if split else 'int8'}",
                   {"row_ptr": "*i32", "col_idx": "*i32", "values_ptr": "*i8" if bits == 8 else "*u8",
                    "a_scale_ptr": "*fp32", "b_ptr": "*i16" if split else "*i8", "b_scale_ptr": "*fp32",
                    "out_ptr": "*fp32", "n_cols": "i32", "stride_bk": "i32", "stride_on": "i32", "V": "constexpr",
                    "BITS": "constexpr", "SPLIT": "constexpr", "TILE_M": "constexpr", "BLOCK_K": "constexpr",
                    "BLOCK_N": "constexpr"},
                   {"V": vector, "BITS": bits, "SPLIT": split, "TILE_M": SPARSE_TILE_M, "BLOCK_K": SPARSE_BLOCK_K,
                    "BLOCK_N": SPARSE_BLOCK_N})


def _sddmm(vector):
    from effplug.kernels.triton_kernels import SPARSE_BLOCK_K, SPARSE_BLOCK_N, SPARSE_TILE_M

    return Variant("_sddmm_kernel", f"V={vector} int8",
                   {"row_ptr": "*i32", "col_idx": "*i32", "a_ptr": "*i8", "a_scale_ptr": "*fp32", "b_ptr": "*i8",
                    "b_scale_ptr": "*fp32", "out_ptr": "*fp32", "depth": "i32", "stride_a": "i32", "stride_b": "i32",
                    "V": "constexpr", "TILE_M": "constexpr", "BLOCK_K": "constexpr", "BLOCK_NNZ": "constexpr"},
                   {"V": vector, "TILE_M": SPARSE_TILE_M, "BLOCK_K": SPARSE_BLOCK_K, "BLOCK_NNZ": SPARSE_BLOCK_N})


def _error_bounded(kernel, dtype="fp32", width=4):
    from effplug.kernels.triton_kernels import GROUP_KERNEL_BLOCK

    common = {"n": "i32", "n_groups": "i32", "step": "fp32", "GROUP": "constexpr", "ROWS": "constexpr"}
    constexprs = {"GROUP": 128, "ROWS": GROUP_KERNEL_BLOCK // 128}
    codes = "*i16" if width == 16 else "*u8"
    if kernel == "stats":
        return Variant("_error_bounded_stats_kernel", f"{dtype}",
                       {"x_ptr": _DTYPES[dtype], "zero_ptr": "*fp32", "top_ptr": "*fp32", "err_ptr": "*fp32", **common},
                       constexprs)
    if kernel == "pack":
        return Variant("_error_bounded_pack_kernel", f"{dtype} {width}-bit",
                       {"x_ptr": _DTYPES[dtype], "zero_ptr": "*fp32", "out_ptr": codes, **common, "WIDTH": "constexpr"},
                       {**constexprs, "WIDTH": width})
    return Variant("_error_bounded_decode_kernel", f"{dtype} {width}-bit",
                   {"data_ptr": codes, "zero_ptr": "*fp32", "out_ptr": _DTYPES[dtype], **common, "WIDTH": "constexpr"},
                   {**constexprs, "WIDTH": width})


def _lowpass(dtype, bits, stochastic, backward=False):
    from effplug.kernels.triton_kernels import GROUP_KERNEL_BLOCK

    geometry = {k: "i32" for k in ("n", "n_groups", "h", "w", "kh", "kw", "hl", "wl")}
    constexprs = {"BITS": bits, "GROUP": 128, "ROWS": GROUP_KERNEL_BLOCK // 128}
    if backward:
        constexprs["ROWS"] //= 2  # what the launcher passes
        return Variant("_lowpass_residual_dequantize_kernel", f"{dtype} {bits}-bit",
                       {"data_ptr": "*u8", "scale_ptr": "*bf16", "zero_ptr": "*bf16", "lfc_ptr": "*bf16",
                        "out_ptr": _DTYPES[dtype], **geometry, "BITS": "constexpr", "GROUP": "constexpr",
                        "ROWS": "constexpr"}, constexprs)
    import triton.language as tl

    geometry = {"n": "i32", "n_groups": "i32", "seed": "i64", **{k: "i32" for k in ("h", "w", "kh", "kw", "hl", "wl")}}
    return Variant("_lowpass_residual_quantize_kernel", f"{dtype} {bits}-bit {'SR' if stochastic else 'RN'}",
                   {"x_ptr": _DTYPES[dtype], "lfc_ptr": "*bf16", "data_ptr": "*u8", "scale_ptr": "*bf16",
                    "zero_ptr": "*bf16", **geometry, "BITS": "constexpr", "GROUP": "constexpr", "ROWS": "constexpr",
                    "STOCHASTIC": "constexpr", "SCALE_DTYPE": "constexpr"},
                   {**constexprs, "STOCHASTIC": stochastic, "SCALE_DTYPE": tl.bfloat16})


def _mask(kernel, dtype="fp32", flag=False):
    from effplug.kernels.triton_kernels import MASK_BLOCK

    ptr = {"u8": "*u8", **_DTYPES}[dtype]
    if kernel == "pack":
        return Variant("_pack_mask_kernel", f"{dtype}{' two-level' if flag else ''}",
                       {"x_ptr": ptr, "data_ptr": "*u8", "top_ptr": "*fp32", "low_ptr": "*fp32", "nan_ptr": "*i32",
                        "n": "i32", "POSITIVE": "constexpr", "STATS": "constexpr", "BLOCK": "constexpr"},
                       {"POSITIVE": not flag, "STATS": flag, "BLOCK": MASK_BLOCK})
    mode = {"u8": 0}.get(dtype, 2 if flag else 1)
    return Variant("_unpack_mask_kernel", f"{dtype} mode {mode}",
                   {"data_ptr": "*u8", "src_ptr": ptr, "out_ptr": ptr, "n": "i32", "floor": "fp32",
                    "MODE": "constexpr", "BLOCK": "constexpr"}, {"MODE": mode, "BLOCK": MASK_BLOCK})


def _squared_error(dtype):
    from effplug.kernels.triton_kernels import STATS_BLOCK

    return Variant("_squared_error_kernel", dtype,
                   {"a_ptr": _DTYPES[dtype], "b_ptr": _DTYPES[dtype], "err_ptr": "*fp64", "ref_ptr": "*fp64",
                    "n": "i32", "BLOCK": "constexpr"}, {"BLOCK": STATS_BLOCK})


def _method_kernels(full: bool) -> list[Variant]:
    """COMET's, DIVISION's, the lossless masks' and the calibration probes' kernels."""
    if not full:
        return [_error_bounded("stats", "bf16"), _error_bounded("pack", "fp32", 2), _error_bounded("pack", "fp16", 16),
                _error_bounded("decode", "bf16", 16), _error_bounded("decode", "fp32", 8),
                _lowpass("fp32", 2, True), _lowpass("bf16", 4, False), _lowpass("fp16", 8, False, backward=True),
                _mask("pack", "u8"), _mask("pack", "bf16", True), _mask("unpack", "u8"), _mask("unpack", "fp16"),
                _mask("unpack", "fp32", True), _squared_error("bf16")]
    dtypes = list(_DTYPES)
    out = [_error_bounded("stats", d) for d in dtypes]
    out += [_error_bounded(k, d, w) for k in ("pack", "decode") for d in dtypes for w in (1, 2, 4, 8, 16)]
    out += [_lowpass(d, b, s) for d in dtypes for b in (1, 2, 4, 8) for s in (False, True)]
    out += [_lowpass(d, b, False, backward=True) for d in dtypes for b in (1, 2, 4, 8)]
    out += [_mask("pack", d, f) for d in ("u8", *dtypes) for f in (False, True) if not (d == "u8" and f)]
    out += [_mask("unpack", "u8")] + [_mask("unpack", d, f) for d in dtypes for f in (False, True)]
    return out + [_squared_error(d) for d in dtypes]


def variants(full: bool = False) -> list[Variant]:
    """The kernel variants the dispatch can launch. By default each value of each axis (dtype, bits,
    stochastic, scale dtype, output) once, a covering set for ``make test``; ``full`` the whole product."""
    dtypes, all_bits = list(_DTYPES), (1, 2, 4, 8)
    if full:
        out = [_quantize_pack(d, b, s, sc) for d in dtypes for b in all_bits for s in (False, True)
               for sc in ("fp16", "bf16")]
        out += [_unpack(d, b) for d in dtypes for b in all_bits]
        out += [_affine(d, b, s) for d in dtypes for b in (2, 4, 8) for s in (False, True)]
        out += [_pow2(d, c) for d in dtypes for c in (False, True)]
        out += [k(d) for k in (_topk_count, _topk_compact, _fake_quantize, _dropout_backward) for d in dtypes]
        out += [_bias_dropout_residual(d, b) for d in dtypes for b in (False, True)]
        out += [_spmm(v, b, s) for v in (2, 4, 8) for b in (4, 8) for s in (False, True)]
        out += [_sddmm(v) for v in (2, 4, 8)]
        out += [k(d, b) for k in (_rms_norm, _layer_norm, _swiglu, _rope) for d in dtypes for b in (False, True)]
        out += [_gelu(d, t, g, b) for d in dtypes for t in (False, True) for g in (False, True) for b in (False, True)]
        out += [_softmax(d, m, p, b) for d in dtypes for m in (False, True) for p in (False, True)
                for b in (False, True) if not (b and m)]
        out += [_channel_stats(k, d) for k in ("rows", "inner") for d in dtypes] + [_channel_stats("octav")]
        out += [_cross_entropy_rows()]
        return out + _method_kernels(True)
    return [_quantize_pack("fp32", 1, False, "fp16"), _quantize_pack("fp16", 2, True, "bf16"),
            _quantize_pack("bf16", 4, True, "fp16"), _quantize_pack("fp32", 8, True, "bf16"),
            _unpack("fp32", 1), _unpack("fp16", 2), _unpack("bf16", 4), _unpack("fp32", 8),
            _affine("fp32", 2, False), _affine("fp16", 4, True), _affine("bf16", 8, True),
            _pow2("fp32", False), _pow2("bf16", True),
            _topk_count("fp32"), _topk_compact("fp16"), _fake_quantize("bf16"),
            _bias_dropout_residual("fp32", True), _bias_dropout_residual("bf16", False), _dropout_backward("fp16"),
            _spmm(2, 8, False), _spmm(4, 4, True), _spmm(8, 8, True), _sddmm(4),
            _rms_norm("bf16", False), _rms_norm("fp32", True), _swiglu("fp16", False), _swiglu("bf16", True),
            _gelu("fp32", False, False, False), _gelu("bf16", True, True, True), _gelu("fp16", False, True, True),
            _softmax("fp32", True, False, False), _softmax("bf16", True, True, False), _softmax("fp16", False, True, True),
            _softmax("fp32", False, False, True), _layer_norm("fp16", False), _layer_norm("bf16", True),
            _rope("bf16", False), _rope("fp32", True), _channel_stats("rows", "bf16"), _channel_stats("inner", "fp16"),
            _channel_stats("octav"), _cross_entropy_rows(), *_method_kernels(False)]


def _tool(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def compile_variant(variant: Variant, capability: int) -> CompileResult:
    """Compile one variant for ``sm_<capability>``; the error text instead of raising, so a table shows all."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from effplug.kernels import triton_kernels

    target = f"sm_{capability}"
    fn = getattr(triton_kernels, variant.kernel)
    try:
        compiled = triton.compile(ASTSource(fn, variant.signature, variant.constexprs),
                                  target=GPUTarget("cuda", capability, 32), options={"num_warps": variant.num_warps})
    except Exception as error:  # a compile error is the result we report
        return CompileResult(variant, target, 0, 0, 0, 0, error=f"{type(error).__name__}: {error}"[:300])
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(compiled.asm["cubin"])
        path = f.name
    try:
        usage = subprocess.run([_tool("cuobjdump"), "-res-usage", path], capture_output=True, text=True).stdout
        sass = subprocess.run([_tool("cuobjdump"), "-sass", path], capture_output=True, text=True).stdout
    finally:
        os.unlink(path)
    field = lambda name: int(m.group(1)) if (m := re.search(rf"{name}:(\d+)", usage)) else 0  # noqa: E731
    lines = re.findall(r"^\s+/\*[0-9a-f]{4}\*/\s+([^;]*);", sass, flags=re.M)
    instructions = sum(1 for line in lines if not line.strip().startswith("NOP"))
    return CompileResult(variant, target, field("REG"), field("STACK") + field("LOCAL"), field("SHARED"),
                         instructions)


def compile_all(capabilities=(80, 90), kernels: set | None = None, full: bool = False,
                progress=None) -> list[CompileResult]:
    results = []
    todo = [v for v in variants(full) if kernels is None or v.kernel in kernels]
    for i, variant in enumerate(todo):
        for capability in capabilities:
            results.append(compile_variant(variant, capability))
        if progress is not None:
            progress(i + 1, len(todo), variant)
    return results


def format_table(results: list[CompileResult]) -> str:
    lines = ["| kernel | variant | target | registers | spills (B) | shared (B) | SASS instructions | |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        if r.error:
            lines.append(f"| {r.variant.kernel} | {r.variant.label} | {r.target} | - | - | - | - | {r.error} |")
            continue
        known = KNOWN_SPILLS.get((r.variant.kernel, r.target))
        flag = "over budget" if r.registers > REGISTER_BUDGET else ""
        if r.spill_bytes:
            flag = "known spill (KNOWN_SPILLS)" if known and r.spill_bytes <= known[0] else "spills"
        lines.append(f"| {r.variant.kernel} | {r.variant.label} | {r.target} | {r.registers} | {r.spill_bytes} | "
                     f"{r.shared_bytes} | {r.instructions} | {flag} |")
    return "\n".join(lines)
