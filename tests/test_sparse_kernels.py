"""Magicube-style vector-sparse integer products: the format, SpMM and SDDMM (Triton under the interpreter
against the torch reference, bit for bit), SparseLinear and sparse attention."""

import pytest
import torch

from effplug.kernels.sddmm import sddmm
from effplug.kernels.spmm import quantize_dense, spmm
from effplug.sparse import SparseLinear, VectorSparseMatrix, sparse_attention
from effplug.sparse.format import pack_int4, unpack_int4


def _sparse(rows, cols, density, vector, bits, seed=0):
    gen = torch.Generator().manual_seed(seed)
    dense = torch.randn(rows, cols, generator=gen)
    mask = torch.rand(rows, cols, generator=gen) < density
    mask[: min(rows, vector)] = False  # an empty vector row
    return dense, mask, VectorSparseMatrix.from_dense(dense, mask, vector, bits)


@pytest.mark.parametrize("vector", [2, 4, 8])
@pytest.mark.parametrize("bits", [4, 8])
def test_format_round_trip_keeps_the_mask_and_rounds_within_half_a_step(vector, bits):
    dense, mask, a = _sparse(37, 29, 0.3, vector, bits)
    assert a.shape == (37, 29) and a.padded_rows % vector == 0
    assert torch.equal(a.dense_mask(), mask)
    step = a.scales[:37, None]
    err = (a.to_dense() - dense * mask).abs()
    assert (err <= step / 2 + 1e-6).all()
    assert (a.to_dense()[~mask] == 0).all()
    assert a.nbytes() < dense.numel() * 4


def test_int4_values_follow_the_core_packing_order():
    q = torch.tensor([-8, 7, 0, -1, 3, -7], dtype=torch.int8)
    packed = pack_int4(q)
    assert packed.tolist() == [(-8 + 8) | ((7 + 8) << 4), (0 + 8) | ((-1 + 8) << 4), (3 + 8) | ((-7 + 8) << 4)]
    assert torch.equal(unpack_int4(packed, 6), q)


@pytest.mark.parametrize("vector", [2, 4, 8])
@pytest.mark.parametrize("bits,dense_bits", [(8, 8), (4, 8), (8, 16), (4, 16)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_spmm_triton_equals_the_reference_and_the_dequantized_product(use_backend, vector, bits, dense_bits, dtype):
    _, _, a = _sparse(37, 70, 0.3, vector, bits)
    b = torch.randn(70, 45, generator=torch.Generator().manual_seed(1)).to(dtype)
    use_backend("torch")
    reference = spmm(a, b, dense_bits)
    use_backend("triton")
    assert torch.equal(spmm(a, b, dense_bits), reference)
    assert reference.dtype == dtype and reference.shape == (37, 45)
    qb, sb = quantize_dense(b, dense_bits, dim=0)
    exact = a.to_dense(torch.float64) @ (qb.double() * sb.double())
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    torch.testing.assert_close(reference.double(), exact, rtol=tol, atol=tol * exact.abs().max().item())


def test_spmm_16_bit_split_is_closer_to_float_than_8_bit():
    dense, mask, a = _sparse(32, 64, 0.5, 4, 8)
    b = torch.randn(64, 24)
    exact = a.to_dense() @ b
    err8 = (spmm(a, b, 8) - exact).abs().max()
    err16 = (spmm(a, b, 16) - exact).abs().max()
    assert err16 < err8 / 50


@pytest.mark.parametrize("vector", [2, 4, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sddmm_triton_equals_the_reference_and_samples_the_product(use_backend, vector, dtype):
    gen = torch.Generator().manual_seed(2)
    mask = torch.rand(29, 41, generator=gen) < 0.25
    pattern = VectorSparseMatrix.from_dense(torch.ones(29, 41), mask, vector, 8)
    a, b = torch.randn(29, 50, generator=gen).to(dtype), torch.randn(41, 50, generator=gen).to(dtype)
    use_backend("torch")
    reference = sddmm(pattern, a, b)
    use_backend("triton")
    assert torch.equal(sddmm(pattern, a, b), reference)
    qa, sa = quantize_dense(a, 8, dim=1)
    qb, sb = quantize_dense(b, 8, dim=1)
    exact = torch.zeros(pattern.padded_rows, 41, dtype=torch.float64)
    exact[:29] = (qa.double() * sa[:, None].double()) @ (qb.double() * sb[:, None].double()).T
    rows = pattern.element_rows()
    sampled = exact[rows, pattern.col_idx.long()[:, None].expand_as(rows)] * pattern.element_mask
    torch.testing.assert_close(reference.double(), sampled, rtol=1e-5, atol=1e-5)


def test_bad_operands_raise_what_to_do():
    _, _, a = _sparse(16, 20, 0.5, 4, 8)
    with pytest.raises(ValueError, match=r"B must be \[K=20, N\]"):
        spmm(a, torch.randn(21, 3))
    with pytest.raises(ValueError, match="dense_bits=4 is not supported; use 8 or 16"):
        spmm(a, torch.randn(20, 3), 4)
    with pytest.raises(ValueError, match="non-finite"):
        spmm(a, torch.tensor(float("nan")).expand(20, 3).clone())
    with pytest.raises(ValueError, match="vector=3 is not supported; use one of 2, 4, 8"):
        VectorSparseMatrix.from_dense(torch.ones(4, 4), vector=3)
    with pytest.raises(ValueError, match="use 4 or 8"):
        VectorSparseMatrix.from_dense(torch.ones(4, 4), bits=2)


@pytest.mark.parametrize("bits", [4, 8])
def test_sparse_linear_matches_a_masked_dense_layer_and_keeps_gradients_at_the_mask(bits):
    torch.manual_seed(0)
    linear = torch.nn.Linear(48, 20)
    mask = torch.rand(20, 48) < 0.4
    sparse = SparseLinear.from_linear(linear, mask, vector=4, bits=bits, dense_bits=16)
    masked = torch.nn.Linear(48, 20)
    masked.weight.data = sparse.sparse_weight().to_dense()  # what the layer multiplies with
    masked.bias.data = linear.bias.data.clone()
    x = torch.randn(3, 5, 48, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    torch.testing.assert_close(sparse(x), masked(x_ref), rtol=1e-3, atol=1e-3)
    sparse(x).square().sum().backward()
    masked(x_ref).square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-3, atol=1e-3)
    rows = sparse.structure().element_rows()
    at_mask = torch.cat([masked.weight.grad, masked.weight.grad.new_zeros(0, 48)])[rows.clamp_max(19),
                                                                               sparse.col_idx.long()[:, None]]
    at_mask = torch.where(sparse.element_mask, at_mask, torch.zeros(()))
    torch.testing.assert_close(sparse.values.grad, at_mask, rtol=1e-3, atol=1e-3)
    assert sparse.values.numel() < linear.weight.numel() and sparse.weight_nbytes() < linear.weight.numel() * 4 / 2


def test_sparse_linear_trains_and_its_state_is_plain_tensors(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(64, 16)
    y = x @ torch.randn(16, 8)
    layer = SparseLinear.from_linear(torch.nn.Linear(16, 8), torch.rand(8, 16) < 0.5, vector=2)
    opt = torch.optim.Adam(layer.parameters(), lr=3e-2)
    losses = []
    for _ in range(40):
        loss = torch.nn.functional.mse_loss(layer(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]
    torch.save(layer.state_dict(), tmp_path / "s.pt")
    state = torch.load(tmp_path / "s.pt", weights_only=True)
    again = SparseLinear(16, 8, layer.structure().with_values(layer.values))
    again.load_state_dict(state)
    assert torch.equal(again(x), layer(x))


@pytest.mark.parametrize("vector", [2, 8])
def test_sparse_attention_matches_dense_masked_attention(use_backend, vector):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 24, 16) for _ in range(3))
    mask = torch.tril(torch.ones(24, 24, dtype=torch.bool)) & (torch.rand(24, 24) < 0.6)
    mask |= torch.eye(24, dtype=torch.bool)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    use_backend("torch")
    reference = sparse_attention(q, k, v, mask, vector=vector)
    use_backend("triton")
    assert torch.equal(sparse_attention(q, k, v, mask, vector=vector), reference)
    assert (reference - expected).abs().max() < 0.05
