"""Triton kernels vs their torch references, in the Triton interpreter on CPU (fp32 unless noted).

Tolerances: fp32 attention 1e-4 (fp32 dots in numpy; order of summation differs from the reference);
fused ops fp32 1e-5; fp16 attention 5e-3. bf16 cases (KV write, fused ops) allow a couple of bf16
ulps: the interpreter also rounds fp32 -> bf16
by truncation where a GPU rounds to nearest.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton

import pytest  # noqa: E402
import torch  # noqa: E402
from helpers.triton_marks import HAVE_TRITON, needs_triton  # noqa: E402
from tokenleap.kernels import fused_ref  # noqa: E402
from tokenleap.kernels.attention_ref import paged_attention_ref  # noqa: E402
from tokenleap.kernels.dispatch import attention_backend  # noqa: E402
from tokenleap.model.layers import rope_cos_sin_cache, rope_inv_freq  # noqa: E402


def _paged_batch(q_lens, seq_lens, heads, kv_heads, head_dim, page, dtype=torch.float32, seed=0):
    """Random query + paged cache with shuffled block tables; returns the kernel's and reference's inputs."""
    g = torch.Generator().manual_seed(seed)
    nblk = [-(-s // page) for s in seq_lens]
    num_blocks = sum(nblk) + 2
    perm = torch.randperm(num_blocks, generator=g)
    tables = torch.zeros(len(q_lens), max(nblk) + 1, dtype=torch.int32)
    used = 0
    for r, n in enumerate(nblk):
        tables[r, :n] = perm[used : used + n]
        used += n
    cache_shape = (num_blocks, page, kv_heads, head_dim)
    k_cache = torch.randn(cache_shape, generator=g).to(dtype)
    v_cache = torch.randn(cache_shape, generator=g).to(dtype)
    query = torch.randn(sum(q_lens), heads, head_dim, generator=g).to(dtype)
    qsl = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    return query, k_cache, v_cache, tables, qsl, torch.tensor(seq_lens, dtype=torch.int32)


def _check_attention(
    q_lens,
    seq_lens,
    heads=4,
    kv_heads=2,
    head_dim=64,
    page=16,
    window=None,
    dtype=torch.float32,
    atol=1e-4,
    **kw,
):
    from tokenleap.kernels.triton_attention import paged_attention_triton

    query, k_cache, v_cache, tables, qsl, sl = _paged_batch(
        q_lens, seq_lens, heads, kv_heads, head_dim, page, dtype
    )
    scale = head_dim**-0.5
    ref = paged_attention_ref(
        query.float(), k_cache.float(), v_cache.float(), tables, q_lens, seq_lens, scale, window
    )
    out = paged_attention_triton(query, k_cache, v_cache, tables, qsl, sl, max(q_lens), scale, window, **kw)
    assert out.shape == query.shape and out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, atol=atol, rtol=0)


@pytest.mark.parametrize("page", [16, 32])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("group", [1, 2, 4])
@needs_triton
def test_decode(page, head_dim, group):
    _check_attention([1, 1, 1], [1, 45, 130], heads=2 * group, kv_heads=2, head_dim=head_dim, page=page)


@pytest.mark.parametrize("k", [1, 3, 5, 7])
@pytest.mark.parametrize("group", [1, 4])
@needs_triton
def test_verify(k, group):
    _check_attention([1 + k, 1 + k, 1], [1 + k, 70, 33], heads=2 * group, kv_heads=2)


@pytest.mark.parametrize("split_tokens", [0, 64, 128])
@needs_triton
def test_verify_split_sizes_agree(split_tokens):
    _check_attention([8, 4], [200, 97], heads=8, kv_heads=2, page=32, split_tokens=split_tokens)


@needs_triton
def test_verify_gqa8_widest_tile():
    _check_attention([16, 2], [40, 17], heads=8, kv_heads=1)  # 16 queries x 8 heads = 128 rows


@pytest.mark.parametrize("page", [16, 32])
@needs_triton
def test_prefill_chunks_mixed_with_decodes(page):
    # chunk with prior context, a fresh prompt, a decode, a verify: the 128-row prefill config
    _check_attention([37, 50, 1, 4], [90, 50, 61, 20], heads=4, kv_heads=2, page=page)


@pytest.mark.parametrize("q_lens,seq_lens", [([1, 6], [100, 80]), ([45, 1], [120, 9])])
@pytest.mark.parametrize("window", [1, 16, 50])
@needs_triton
def test_sliding_window(q_lens, seq_lens, window):
    _check_attention(q_lens, seq_lens, heads=4, kv_heads=2, window=window)


@needs_triton
def test_head_dim_80_padded():
    _check_attention([3, 1], [50, 21], heads=6, kv_heads=3, head_dim=80)
    _check_attention([20], [40], heads=2, kv_heads=1, head_dim=96)


@needs_triton
def test_fp16_decode_and_prefill():
    # Half precision through tl.dot. (bf16 tl.dot gives garbage in the triton 3.6 interpreter, so bf16
    # attention is checked on the GPU by tests/benchmarks/bench_kernels_gpu.py instead.)
    _check_attention([1, 4], [70, 33], dtype=torch.float16, atol=5e-3)
    _check_attention([40], [60], dtype=torch.float16, atol=5e-3)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # merges garbage partials of pads
@needs_triton
def test_padding_tokens_and_out_buffer():
    """Graph-padded batches: tokens past query_start_loc[-1] belong to no request and are left alone."""
    from tokenleap.kernels.triton_attention import paged_attention_triton

    query, k_cache, v_cache, tables, qsl, sl = _paged_batch([1, 1], [30, 64], 4, 2, 64, 16)
    padded = torch.cat([query, torch.randn(2, 4, 64)])
    out = torch.full_like(padded, 7.0)
    res = paged_attention_triton(padded, k_cache, v_cache, tables, qsl, sl, 1, 0.125, out=out, split_tokens=64)
    assert res is out
    ref = paged_attention_ref(query, k_cache, v_cache, tables, [1, 1], [30, 64], 0.125)
    torch.testing.assert_close(out[:2], ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("page,head_dim,heads,kv_heads", [(16, 64, 4, 2), (32, 128, 6, 2), (8, 64, 3, 3)])
@needs_triton
def test_rope_and_write_kv(dtype, page, head_dim, heads, kv_heads):
    """RoPE and the KV write in one kernel: q rotated into a new tensor, rotated k and v into their cache
    slots (strided views of a fused qkv buffer in; a slot < 0 writes nothing), as the reference pair does."""
    from tokenleap.kernels import triton_fused as tf

    g = torch.Generator().manual_seed(page + head_dim)
    n = 9
    qkv = torch.randn(n, heads + 2 * kv_heads, head_dim, generator=g).to(dtype)
    q, k, v = qkv[:, :heads], qkv[:, heads : heads + kv_heads], qkv[:, heads + kv_heads :]
    cos_sin = rope_cos_sin_cache(rope_inv_freq(head_dim, 10000.0), 256)
    pos = torch.randint(0, 256, (n,), generator=g)
    k_cache = torch.randn(6, page, kv_heads, head_dim, generator=g).to(dtype)
    v_cache = torch.randn(6, page, kv_heads, head_dim, generator=g).to(dtype)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    slots = torch.randperm(6 * page, generator=g)[:n]
    slots[4] = -1  # not written
    before = qkv.clone()
    q_rot = tf.rope_and_write_kv(pos, q, k, v, cos_sin, k_cache, v_cache, slots)
    keep = slots >= 0
    want_q = fused_ref.rope_and_write_kv_ref(pos[keep], q[keep], k[keep], v[keep], cos_sin, k_ref, v_ref,
                                              slots[keep])
    tol = 1e-5 if dtype == torch.float32 else 8e-2  # bf16: rounds once in fp32 vs per op (see test_fused_ops)
    close = lambda a, b: torch.testing.assert_close(a.float(), b.float(), atol=tol, rtol=tol)  # noqa: E731
    close(q_rot[keep], want_q)
    close(q_rot[~keep], fused_ref.rotary_embedding_ref(pos[~keep], q[~keep], k[~keep], cos_sin)[0])
    close(k_cache, k_ref)  # every written slot equal, every other slot untouched
    assert torch.equal(v_cache, v_ref)  # values are copied, not computed
    assert torch.equal(qkv, before)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 8e-2)])
@needs_triton
def test_fused_ops(dtype, tol):
    from tokenleap.kernels import triton_fused as tf

    g = torch.Generator().manual_seed(1)
    x, r = torch.randn(6, 96, generator=g).to(dtype), torch.randn(6, 96, generator=g).to(dtype)
    w = (1 + 0.1 * torch.randn(96, generator=g)).to(dtype)
    close = lambda a, b: torch.testing.assert_close(a.float(), b.float(), atol=tol, rtol=tol)  # noqa: E731
    close(tf.rms_norm(x, w, 1e-6), fused_ref.rms_norm_ref(x, w, 1e-6))
    for got, want in zip(
        tf.fused_add_rms_norm(x, r, w, 1e-5), fused_ref.fused_add_rms_norm_ref(x, r, w, 1e-5), strict=True
    ):
        close(got, want)
    gu = torch.randn(7, 2 * 80, generator=g).to(dtype)
    close(tf.silu_and_mul(gu), fused_ref.silu_and_mul_ref(gu))


@pytest.mark.parametrize("q", [1, 4])
@needs_triton
def test_embed_fed(q):
    """Embedding of a graphed step: the weight's rows of the ids, except the first row of each request flagged to
    feed, which takes the fed token; exactly the reference's, and the reference is that definition."""
    from tokenleap.kernels import triton_fused as tf

    g = torch.Generator().manual_seed(q)
    weight = torch.randn(50, 40, generator=g).bfloat16()
    ids = torch.randint(0, 50, (3 * q,), generator=g)
    feed, fed = torch.tensor([1, 0, 1]), torch.tensor([7, 8, 9, 10])  # fed may be longer than the batch
    want = weight[ids].clone()
    want[0], want[2 * q] = weight[7], weight[9]
    assert torch.equal(fused_ref.embed_fed_ref(weight, ids, feed, fed), want)
    assert torch.equal(tf.embed_fed(weight, ids, feed, fed), want)
    assert torch.equal(tf.embed_fed(weight, ids), weight[ids])
    with pytest.raises(ValueError, match="feed and fed come together"):
        tf.embed_fed(weight, ids, feed)


def test_references_match_hf():
    """The fused-op references are bit-identical to transformers' Llama modules."""
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    x = torch.randn(3, 5, 64).bfloat16()
    norm = llama.LlamaRMSNorm(64, eps=1e-6).to(torch.bfloat16)
    norm.weight.data = (1 + 0.1 * torch.randn(64)).bfloat16()
    assert torch.equal(norm(x), fused_ref.rms_norm_ref(x, norm.weight, 1e-6))
    cache = rope_cos_sin_cache(rope_inv_freq(64, 10000.0), 32)
    pos = torch.tensor([0, 7, 31])
    q, k = torch.randn(3, 4, 64).bfloat16(), torch.randn(3, 2, 64).bfloat16()
    cos = torch.cat([cache[pos, :32]] * 2, -1).bfloat16()[None]  # HF: [batch, seq, D] in x.dtype
    sin = torch.cat([cache[pos, 32:]] * 2, -1).bfloat16()[None]
    hq, hk = llama.apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos, sin)
    rq, rk = fused_ref.rotary_embedding_ref(pos, q, k, cache)
    assert torch.equal(hq[0].transpose(0, 1), rq) and torch.equal(hk[0].transpose(0, 1), rk)


def test_dispatch(monkeypatch):
    assert attention_backend("cpu") == "torch"
    assert attention_backend("cuda", prefer="torch") == "torch"
    assert attention_backend("cuda") == ("triton" if HAVE_TRITON else "torch")
    with pytest.raises(ValueError, match="unknown attention backend"):
        attention_backend("cuda", prefer="flash")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="not CUDA|not installed"):
        attention_backend("cpu", prefer="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert attention_backend("cpu") == "torch"  # auto never picks the interpreter
    if HAVE_TRITON:
        assert attention_backend("cpu", prefer="triton") == "triton"
