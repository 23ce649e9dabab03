"""Weight-only quantization and the CPU fast path's linears (kernels/quant_ref.py, kernels/cpu_linear.py).

- The maths: int8 / int4 codes are within half a step of the weights; a dequantized Q4_1 block gives back its
  codes exactly (llama.cpp's rule), so the int4 format of a Q4_1 GGUF is the file's own 4-bit weights.
- The packed weights: ``dequantize()`` is the readable formula over the ``quant_ref`` codes with bfloat16
  scales, and ATen's kernels equal ``x @ dequantize().T`` within the result's bfloat16 rounding.
- Row invariance (what keeps speculative output equal to plain decoding): row m of ``cpu_linear`` has the same
  bits whatever the other rows and their number, for bfloat16, int8 and int4 weights, with 1 and 2 threads.
"""

from __future__ import annotations

import pytest
import torch
from tokenleap.kernels.cpu_linear import (
    ROW_CHUNK,
    Int4Weight,
    Int8Weight,
    cpu_linear,
    int4_packable,
    pack_int4,
    pack_int8,
    pack_weight,
)
from tokenleap.kernels.quant_ref import (
    INT4_GROUP,
    dequantize_int4_groups,
    dequantize_int8_rows,
    quantize_int4_groups,
    quantize_int8_rows,
)


def weights(n: int, k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) * 0.05  # [N, K] float32


# ---- the maths -------------------------------------------------------------------------------------------


def test_int8_codes_within_half_a_step():
    w = weights(48, 96)
    w[3] = 0.0  # an all-zero row
    q, scale = quantize_int8_rows(w)
    assert q.dtype == torch.int8 and int(q.abs().max()) <= 127
    assert torch.equal(q[3], torch.zeros_like(q[3]))
    err = (dequantize_int8_rows(q, scale) - w).abs()  # [N, K]
    assert bool((err <= scale[:, None] / 2 + 1e-7).all())
    assert torch.equal(q.abs().amax(dim=1)[[0, 1, 2, 4]], torch.full((4,), 127, dtype=torch.int8))


def test_int4_codes_within_half_a_step():
    w = weights(32, 4 * INT4_GROUP)
    w[0, :INT4_GROUP] = 0.25  # a constant group: codes 0, exact
    q, scale, low = quantize_int4_groups(w)
    assert q.dtype == torch.uint8 and int(q.max()) <= 15
    err = (dequantize_int4_groups(q, scale, low) - w).abs().view(32, 4, INT4_GROUP)
    assert bool((err <= scale[..., None] / 2 + 1e-7).all())
    assert float(err[0, 0].max()) == 0.0


def test_int4_gives_back_q4_1_codes():
    """Weights that are dequantized Q4_1 blocks (fp16 scale and minimum, codes 0 and 15 present, as llama.cpp's
    quantizer leaves every block) come back as the same codes, and the same weights to float32 rounding."""
    g = torch.Generator().manual_seed(1)
    n, blocks = 16, 6
    d = (torch.rand(n, blocks, generator=g) * 0.02 + 1e-3).half().float()  # [N, B]
    m = (-torch.rand(n, blocks, generator=g) * 0.1).half().float()
    codes = torch.randint(0, 16, (n, blocks, INT4_GROUP), generator=g)
    codes[..., 3], codes[..., 17] = 0, 15
    w = (codes * d[..., None] + m[..., None]).view(n, -1)  # what gguf's dequantize returns
    q, scale, low = quantize_int4_groups(w)
    assert torch.equal(q.view(n, blocks, INT4_GROUP).long(), codes)
    assert torch.allclose(dequantize_int4_groups(q, scale, low), w, rtol=0, atol=1e-6)


def test_int4_needs_whole_groups():
    with pytest.raises(ValueError, match="divisible by 32"):
        quantize_int4_groups(weights(16, 40))
    assert not int4_packable((20, 64)) and int4_packable((32, 64))
    assert pack_weight(weights(20, 64), "int4") is None  # the kernel takes N % 16 == 0 only
    with pytest.raises(ValueError, match="weight format"):
        pack_weight(weights(16, 64), "int3")


# ---- the packed weights against their readable formulas ---------------------------------------------------


def test_int4_dequantize_is_the_codes_with_bf16_scales():
    w = weights(64, 4 * INT4_GROUP)
    q, scale, low = quantize_int4_groups(w)
    s = scale.bfloat16().float()[..., None]  # [N, G, 1]
    zero = (low + 8 * scale).bfloat16().float()[..., None]
    want = ((q.float().view(64, 4, INT4_GROUP) - 8) * s + zero).view(64, -1)
    packed = pack_int4(w)
    assert isinstance(packed, Int4Weight) and packed.shape == (64, 4 * INT4_GROUP)
    assert torch.equal(packed.dequantize(), want)


def test_int8_dequantize_is_the_codes_with_bf16_scales():
    w = weights(40, 96)
    q, scale = quantize_int8_rows(w)
    packed = pack_int8(w)
    assert isinstance(packed, Int8Weight) and packed.shape == (40, 96)
    assert torch.equal(packed.dequantize(), q.float() * scale.bfloat16().float()[:, None])


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_packed_linear_is_x_times_dequantized(fmt, threads):
    """One rounding to bfloat16 of an fp32 sum: |y - ref| <= 2^-8 |ref| + 1e-5 sum |x w| per element."""
    w = weights(96, 8 * INT4_GROUP, seed=2)
    packed = pack_weight(w, fmt)
    x = torch.randn(7, w.shape[1], generator=torch.Generator().manual_seed(3)).bfloat16()  # [M, K]
    bias = torch.randn(96).bfloat16()
    dense = packed.dequantize()  # [N, K] float32
    ref = x.float() @ dense.T  # [M, N]
    bound = 2**-8 * ref.abs() + 1e-5 * (x.float().abs() @ dense.abs().T)
    y = cpu_linear(x, packed)
    assert y.dtype == torch.bfloat16 and y.shape == (7, 96)
    assert bool(((y.float() - ref).abs() <= bound).all())
    assert torch.equal(cpu_linear(x, packed, bias), y + bias)


def test_bf16_weight_is_f_linear():
    w = weights(64, 96).bfloat16()
    x = torch.randn(5, 96).bfloat16()
    assert torch.equal(cpu_linear(x, w), torch.nn.functional.linear(x, w))


# ---- row invariance ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("fmt", ["bf16", "int8", "int4"])
def test_rows_are_invariant(fmt, threads):
    """Row m alone (a decode step), among 2..8 rows (verify steps), in 100 rows and in more than ROW_CHUNK
    (prefill chunks): the same bits. Shapes of SmolLM2's qkv / gate-up / down projections."""
    g = torch.Generator().manual_seed(4)
    for n, k in ((960, 576), (3072, 576), (576, 1536)):
        w = torch.randn(n, k, generator=g) * 0.05
        weight = w.bfloat16() if fmt == "bf16" else pack_weight(w, fmt)
        x = torch.randn(ROW_CHUNK + 40, k, generator=g).bfloat16()  # [M, K]
        alone = torch.cat([cpu_linear(x[m : m + 1], weight) for m in range(x.shape[0])])  # [M, N]
        for rows in (2, 3, 4, 5, 6, 8, 100, ROW_CHUNK + 40):
            for start in range(0, min(x.shape[0], 4 * rows) - rows + 1, rows):  # up to 4 batches of `rows`
                y = cpu_linear(x[start : start + rows], weight)
                differ = (y != alone[start : start + rows]).sum()
                assert differ == 0, f"{fmt} [{n}, {k}]: {int(differ)} outputs of {rows} rows differ from alone"


def test_the_row_invariance_probe_sees_this_process_and_a_varying_matmul(monkeypatch):
    """``bf16_rows_invariant`` is True here (``import tokenleap`` capped oneDNN before any matmul) and False for a
    matmul whose rows depend on the batch (a stand-in adding the row count to every output)."""
    from tokenleap.kernels import cpu_linear as cl

    assert cl.bf16_rows_invariant()
    real = cl.F.linear
    monkeypatch.setattr(cl.F, "linear", lambda x, w, b=None: real(x, w, b) + x.shape[0])
    assert not cl.bf16_rows_invariant()


def test_the_engine_warns_where_rows_vary(monkeypatch):
    import structlog
    from tokenleap.engine import setup
    from tokenleap.kernels import cpu_linear as cl

    monkeypatch.setattr(cl, "bf16_rows_invariant", lambda: False)
    with structlog.testing.capture_logs() as logs:
        setup.warn_if_rows_vary("cpu", torch.bfloat16)
        setup.warn_if_rows_vary("cpu", torch.float32)  # float32 and other backends are not probed
        setup.warn_if_rows_vary("torch", torch.bfloat16)
    assert len(logs) == 1 and logs[0]["log_level"] == "warning"
    assert "ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16" in logs[0]["event"]
