"""Few-row linear kernels (triton_linear) vs their torch references (linear_ref), in the Triton interpreter.

Tolerances: fp32 2e-5 (fp32 dots, another summation order). bf16: two bf16 ulps of the result, plus two
ulps of every term |a_k * w_k| of the fused ops' dot: the interpreter rounds fp32 -> bf16 by truncation
where a GPU and torch round to nearest, so each prologue rounding (of a_k) can be one ulp off, always
towards zero. Batch invariance (row m the same bits whatever the other rows and M) is exact;
tests/benchmarks/bench_linear_gpu.py checks it on the GPU too.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton

import pytest  # noqa: E402
import torch  # noqa: E402
from helpers.triton_marks import HAVE_TRITON, needs_triton  # noqa: E402
from tokenleap.kernels import fused_ref, linear_ref  # noqa: E402


@pytest.fixture(autouse=True)
def _interpreter_dot(monkeypatch):
    """Two fixes to triton 3.6's interpreter tl.dot, for this module only: it multiplies bf16 operands as their
    raw uint16 bits (upcast them to fp32 first: exact, as the tensor cores' products are); and numpy sums a
    broadcast (stride-0) operand in another order than a contiguous one, so the row that M = 1 broadcasts
    to 16 would differ in the last bit from the same row in a full batch (made contiguous)."""
    if not HAVE_TRITON:
        return
    import numpy as np
    import triton.language as tl
    from triton.runtime.interpreter import InterpreterBuilder, TensorHandle

    original = InterpreterBuilder.create_dot

    def create_dot(self, a, b, d, *args):
        if a.dtype == tl.bfloat16:
            a, b = self.cast_impl(a, tl.float32), self.cast_impl(b, tl.float32)
        a, b = (TensorHandle(np.ascontiguousarray(t.data), t.dtype) for t in (a, b))
        return original(self, a, b, d, *args)

    monkeypatch.setattr(InterpreterBuilder, "create_dot", create_dot)


def _ops():
    from tokenleap.kernels import triton_linear

    return triton_linear


def _rand(g, *shape, dtype=torch.float32, scale=1.0):
    return (scale * torch.randn(*shape, generator=g)).to(dtype)


def _close(got, want, dtype, inp=None, w=None):
    """got vs want within the module's tolerances; inp, w: the reference's dot input [M, K] and weight."""
    assert got.dtype == want.dtype and got.shape == want.shape
    if dtype == torch.float32:
        torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)
        return
    bound = 2**-6 * want.float().abs() + 1e-6
    if inp is not None:
        bound += 2**-6 * (inp.float().abs() @ w.float().abs().T)
    excess = (got.float() - want.float()).abs() - bound
    assert (excess <= 0).all(), f"off by more than the bf16 bound: max excess {excess.max().item():.3g}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m,n,k,bias", [(1, 960, 576, True), (3, 50, 100, False), (8, 576, 100, True),
                                        (16, 50, 576, False)])
@needs_triton
def test_linear_small_m(m, n, k, bias, dtype):
    g = torch.Generator().manual_seed(m * n + k)
    x = _rand(g, m, k, dtype=dtype)
    w = _rand(g, n, k, dtype=dtype, scale=k**-0.5)
    b = _rand(g, n, dtype=dtype) if bias else None
    _close(_ops().linear_small_m(x, w, b), linear_ref.linear_ref(x, w, b), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m,n,k,with_residual,bias", [(1, 96, 576, True, False), (3, 50, 100, False, True),
                                                      (16, 40, 100, True, True)])
@needs_triton
def test_add_rms_norm_linear(m, n, k, with_residual, bias, dtype):
    g = torch.Generator().manual_seed(m + n + k)
    x = _rand(g, m, k, dtype=dtype)
    res = _rand(g, m, k, dtype=dtype) if with_residual else None
    nw = (1 + 0.1 * torch.randn(k, generator=g)).to(dtype)
    w = _rand(g, n, k, dtype=dtype, scale=k**-0.5)
    b = _rand(g, n, dtype=dtype) if bias else None
    before = [t.clone() for t in (x, res) if t is not None]
    y, new_res = _ops().add_rms_norm_linear(x, res, nw, 1e-6, w, b)
    want_y, want_res = linear_ref.add_rms_norm_linear_ref(x, res, nw, 1e-6, w, b)
    normed = fused_ref.rms_norm_ref(want_res if with_residual else x, nw, 1e-6)
    _close(y, want_y, dtype, normed, w)
    if with_residual:  # bf16: within one ulp (truncation vs nearest)
        torch.testing.assert_close(new_res, want_res, atol=0, rtol=0 if dtype == torch.float32 else 2**-7)
        assert new_res.data_ptr() not in (x.data_ptr(), res.data_ptr())
    else:
        assert new_res is None
    assert all(torch.equal(a, b) for a, b in zip(before, [t for t in (x, res) if t is not None]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m,inter,k,with_residual,bias", [(1, 48, 576, True, False), (5, 40, 100, False, True),
                                                          (16, 1536, 64, True, False)])
@needs_triton
def test_add_rms_norm_linear_swiglu(m, inter, k, with_residual, bias, dtype):
    """The gate/up projection with SiLU-and-mul in its epilogue: the same bits as the unfused Triton pair
    (projection, then triton_fused.silu_and_mul), within fp32 tolerance of the torch references, and the same
    new residual."""
    from tokenleap.kernels import triton_fused

    g = torch.Generator().manual_seed(m + inter + k)
    x = _rand(g, m, k, dtype=dtype)
    res = _rand(g, m, k, dtype=dtype) if with_residual else None
    nw = (1 + 0.1 * torch.randn(k, generator=g)).to(dtype)
    w = _rand(g, 2 * inter, k, dtype=dtype, scale=k**-0.5)
    b = _rand(g, 2 * inter, dtype=dtype) if bias else None
    y, new_res = _ops().add_rms_norm_linear(x, res, nw, 1e-6, w, b, swiglu=True)
    gate_up, unfused_res = _ops().add_rms_norm_linear(x, res, nw, 1e-6, w, b)
    assert y.shape == (m, inter) and y.dtype == dtype
    assert torch.equal(y, triton_fused.silu_and_mul(gate_up))
    if with_residual:
        assert torch.equal(new_res, unfused_res)
    if dtype == torch.float32:
        want, _ = linear_ref.add_rms_norm_linear_ref(x, res, nw, 1e-6, w, b)
        torch.testing.assert_close(y, fused_ref.silu_and_mul_ref(want), atol=2e-5, rtol=2e-5)


def _qkv_rope_case(g, m, heads, kv_heads, head_dim, dtype, bias):
    """Inputs of add_rms_norm_qkv_rope: rows, residual, norm, a qkv weight, positions, a cos/sin table, caches
    and slots (one row of three without a slot)."""
    k = 96
    n = (heads + 2 * kv_heads) * head_dim
    x, res = _rand(g, m, k, dtype=dtype), _rand(g, m, k, dtype=dtype)
    nw = (1 + 0.1 * torch.randn(k, generator=g)).to(dtype)
    w = _rand(g, n, k, dtype=dtype, scale=k**-0.5)
    b = _rand(g, n, dtype=dtype) if bias else None
    positions = torch.randint(0, 200, (m,), generator=g)
    angles = torch.rand(256, head_dim // 2, generator=g) * 6.3
    cos_sin = torch.cat([angles.cos(), angles.sin()], dim=1)
    caches = [torch.zeros(6, 8, kv_heads, head_dim, dtype=dtype) for _ in range(2)]
    slots = torch.randperm(48, generator=g)[:m]
    slots[1::3] = -1
    return x, res, nw, w, b, positions, cos_sin, caches, slots


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m,heads,kv_heads,head_dim,bias", [(1, 3, 1, 64, False), (5, 4, 2, 32, True),
                                                            (16, 2, 1, 128, False)])
@needs_triton
def test_add_rms_norm_qkv_rope(m, heads, kv_heads, head_dim, bias, dtype):
    """The qkv projection with RoPE and the KV-cache write in its epilogue: the same bits as the unfused Triton
    ops (the fused-norm projection, then triton_fused.rope_and_write_kv): q_rot, both caches (rows without a slot
    left alone) and the new residual."""
    from tokenleap.kernels import triton_fused

    g = torch.Generator().manual_seed(m * heads + head_dim)
    x, res, nw, w, b, positions, cos_sin, caches, slots = _qkv_rope_case(g, m, heads, kv_heads, head_dim, dtype, bias)
    fused_caches = [c.clone() for c in caches]
    q_rot, new_res = _ops().add_rms_norm_qkv_rope(x, res, nw, 1e-6, w, b, positions, cos_sin, *fused_caches, slots,
                                                  heads, kv_heads)
    qkv, want_res = _ops().add_rms_norm_linear(x, res, nw, 1e-6, w, b)
    q, kk, v = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=1)
    want_q = triton_fused.rope_and_write_kv(positions, q.reshape(m, heads, head_dim), kk.reshape(m, kv_heads, head_dim),
                                            v.reshape(m, kv_heads, head_dim), cos_sin, *caches, slots)
    assert q_rot.shape == (m, heads, head_dim)
    assert torch.equal(q_rot, want_q) and torch.equal(new_res, want_res)
    assert torch.equal(fused_caches[0], caches[0]) and torch.equal(fused_caches[1], caches[1])
    assert bool(caches[0].any()) == bool((slots >= 0).any())  # the rows with a slot were written


@needs_triton
def test_strided_rows():
    """Activations may be row views of wider buffers (a slice of a fused projection's output)."""
    ops, g = _ops(), torch.Generator().manual_seed(5)
    buf, res_buf = _rand(g, 6, 240), _rand(g, 6, 160)
    x, res = buf[:, 16:116], res_buf[:, :100]  # [6, 100], row strides 240 and 160
    nw, w, b = 1 + 0.1 * _rand(g, 100), _rand(g, 50, 100, scale=0.1), _rand(g, 50)
    _close(ops.linear_small_m(x, w, b), linear_ref.linear_ref(x, w, b), torch.float32)
    for got, want in zip(ops.add_rms_norm_linear(x, res, nw, 1e-5, w, b),
                         linear_ref.add_rms_norm_linear_ref(x, res, nw, 1e-5, w, b)):
        _close(got, want, torch.float32)
    x_cols = _rand(g, 100, 6).T  # last stride != 1: copied, same result
    _close(ops.linear_small_m(x_cols, w), linear_ref.linear_ref(x_cols, w), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@needs_triton
def test_batch_invariance(dtype):
    """Row m has the same bits alone, in a batch of 3 with other rows, and in a batch of 16."""
    ops, g = _ops(), torch.Generator().manual_seed(7)
    n, k = 40, 160
    x, res = _rand(g, 16, k, dtype=dtype), _rand(g, 16, k, dtype=dtype)
    nw, w, b = (1 + 0.1 * _rand(g, k)).to(dtype), _rand(g, n, k, dtype=dtype, scale=0.1), _rand(g, n, dtype=dtype)
    others = _rand(g, 2, 2 * k, dtype=dtype)
    w_qkv = _rand(g, 3 * 32, k, dtype=dtype, scale=0.1)
    cos_sin = torch.cat([torch.rand(64, 16, generator=g).cos(), torch.rand(64, 16, generator=g).sin()], dim=1)

    def all_ops(rows, res_rows, pos, checked):  # every output of the ops for one batch (row `checked`'s KV in slot 5)
        cache = [torch.zeros(2, 16, 1, 32, dtype=dtype) for _ in range(2)]
        slots = torch.full((rows.shape[0],), -1)
        slots[checked] = 5
        q_rot, _ = ops.add_rms_norm_qkv_rope(rows, res_rows, nw, 1e-6, w_qkv, None, pos, cos_sin, *cache, slots, 1, 1)
        kv = [c[0, 5:6].expand(rows.shape[0], -1, -1) for c in cache]
        return [ops.linear_small_m(rows, w, b), *ops.add_rms_norm_linear(rows, res_rows, nw, 1e-6, w, b),
                ops.add_rms_norm_linear(rows, None, nw, 1e-6, w)[0],
                *ops.add_rms_norm_linear(rows, res_rows, nw, 1e-6, w, b, swiglu=True), q_rot, *kv]

    pos = torch.randint(0, 64, (16,), generator=g)
    for m in (0, 5, 15):
        full = all_ops(x, res, pos, m)
        alone = all_ops(x[m : m + 1], res[m : m + 1], pos[m : m + 1], 0)
        mixed = all_ops(torch.cat([others[:, :k], x[m : m + 1]]), torch.cat([others[:, k:], res[m : m + 1]]),
                        torch.cat([pos[:2], pos[m : m + 1]]), 2)
        for f, a, mx in zip(full, alone, mixed):
            assert torch.equal(f[m], a[0]) and torch.equal(f[m], mx[2])


@needs_triton
def test_no_rows():
    ops = _ops()
    y, new_res = ops.add_rms_norm_linear(torch.zeros(0, 32), torch.zeros(0, 32), torch.ones(32), 1e-6,
                                         torch.ones(8, 32))
    assert y.shape == (0, 8) and new_res.shape == (0, 32)
    assert ops.linear_small_m(torch.zeros(0, 32), torch.ones(8, 32)).shape == (0, 8)


@needs_triton
def test_bad_arguments():
    ops = _ops()
    x, w = torch.zeros(2, 32), torch.zeros(8, 32)
    bad = [
        (lambda: ops.linear_small_m(torch.zeros(17, 32), w), r"x must be \[M, K\] with M <= 16; got shape \(17, 32\)"),
        (lambda: ops.linear_small_m(torch.zeros(32), w), r"x must be .*got shape \(32,\)"),
        (lambda: ops.linear_small_m(x, torch.zeros(8, 31)), r"weight must be \[N, 32\] .*got shape \(8, 31\)"),
        (lambda: ops.linear_small_m(x, w.bfloat16()), "weight must have the activations' dtype"),
        (lambda: ops.linear_small_m(x, torch.zeros(32, 8).T), "weight must have a contiguous last dimension"),
        (lambda: ops.linear_small_m(x, w, torch.zeros(7)), r"bias must be \[8\]; got shape \(7,\)"),
        (lambda: ops.linear_small_m(x.double(), w.double()), "x must be float32, float16 or bfloat16"),
        (lambda: ops.add_rms_norm_linear(x, torch.zeros(3, 32), torch.ones(32), 1e-6, w), "residual must match x"),
        (lambda: ops.add_rms_norm_linear(x, None, torch.ones(31), 1e-6, w), r"norm_weight must be \[32\]"),
        (lambda: ops.add_rms_norm_linear(x, None, torch.ones(32).half(), 1e-6, w), "norm_weight must have x's"),
        (lambda: ops.add_rms_norm_linear(x, None, torch.ones(32), 1e-6, torch.ones(7, 32), swiglu=True),
         "swiglu needs a .gate; up. weight with an even number of rows; got 7"),
    ]
    for call, message in bad:
        with pytest.raises(ValueError, match=message):
            call()
