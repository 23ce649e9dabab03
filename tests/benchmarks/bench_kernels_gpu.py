"""Time the Triton kernels against their torch references on Llama-3-8B shapes; prints tables.

    python tests/benchmarks/bench_kernels_gpu.py            # on a CUDA machine (bf16)
    python tests/benchmarks/bench_kernels_gpu.py --dry-run  # CPU, Triton interpreter, tiny shapes, fp32

Shapes: 32 query heads, 8 kv heads, head_dim 128, KV block 16. Attention: decode at batch 1/8/64 with
context 512/2048/8192, verify (1 + k queries, k = 3/5/7); ours vs ``paged_attention_ref`` vs
``scaled_dot_product_attention`` on a contiguous cache. Correctness (max abs diff vs the reference,
and a CUDA-graph replay of the attention) is checked before anything is timed. GB/s counts the K/V
bytes each call must read once.
"""

from __future__ import annotations

# ruff: noqa: B023  (the lambdas are timed within the loop iteration that defines them)
import argparse
import os
import sys
import time

DRY = "--dry-run" in sys.argv
if DRY:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tokenleap.kernels import fused_ref, triton_fused  # noqa: E402
from tokenleap.kernels.attention_ref import paged_attention_ref  # noqa: E402
from tokenleap.kernels.triton_attention import paged_attention_triton  # noqa: E402
from tokenleap.model.layers import rope_cos_sin_cache, rope_inv_freq  # noqa: E402


def timed(fn, device) -> float:
    """Median milliseconds; one call in dry-run (the interpreter is too slow for more)."""
    if device.type != "cuda":
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def make_batch(q_lens, ctxs, heads, kv_heads, head_dim, page, dtype, device, seed=0):
    """Random query and paged cache for requests of q_lens new tokens over contexts ctxs (shuffled pages)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    nblk = [-(-c // page) for c in ctxs]
    num_blocks = sum(nblk) + 1
    perm = (torch.randperm(num_blocks - 1, generator=g) + 1).int()
    tables = torch.zeros(len(ctxs), max(nblk), dtype=torch.int32)
    for r, n in enumerate(nblk):
        tables[r, :n] = perm[sum(nblk[:r]) : sum(nblk[:r]) + n]
    k_cache = torch.randn(num_blocks, page, kv_heads, head_dim, generator=g).to(device, dtype)
    v_cache = torch.randn(num_blocks, page, kv_heads, head_dim, generator=g).to(device, dtype)
    query = torch.randn(sum(q_lens), heads, head_dim, generator=g).to(device, dtype)
    qsl = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32, device=device)
    seq_lens = torch.tensor(ctxs, dtype=torch.int32, device=device)
    return query, k_cache, v_cache, tables.to(device), qsl, seq_lens


def check_sweep(device) -> None:
    """Ragged batches over the configurations the engine meets; max abs diff vs the reference."""
    print("\ncorrectness sweep (max abs diff vs paged_attention_ref)")
    cases = [  # q_lens, ctxs, heads, kv_heads, head_dim, page, window
        ([1, 1, 1], [1, 300, 4000], 32, 8, 128, 16, None),
        ([4, 8, 16], [40, 900, 3000], 32, 8, 128, 16, None),
        ([16, 3], [700, 50], 8, 1, 128, 32, None),
        ([1, 6], [2000, 333], 8, 8, 64, 32, None),
        ([300, 1, 5, 77], [1000, 513, 64, 77], 32, 8, 128, 16, None),
        ([2, 1], [500, 90], 12, 4, 80, 16, None),
        ([1, 8, 200], [3000, 1500, 700], 16, 4, 128, 16, 256),
        ([9, 3], [40, 3], 4, 2, 96, 64, 7),
    ]
    for dtype in (torch.float32, torch.bfloat16):
        for q_lens, ctxs, h, kvh, d, page, window in cases:
            query, k_cache, v_cache, tables, qsl, seq_lens = make_batch(
                q_lens, ctxs, h, kvh, d, page, dtype, device
            )
            out = paged_attention_triton(
                query, k_cache, v_cache, tables, qsl, seq_lens, max(q_lens), d**-0.5, window
            )
            ref = paged_attention_ref(query, k_cache, v_cache, tables, q_lens, ctxs, d**-0.5, window)
            err = (out.float() - ref.float()).abs().max().item()
            print(
                f"  {str(dtype):>14} q_lens {q_lens} ctx {ctxs} h {h}/{kvh} d {d} page {page} "
                f"window {window}: {err:.1e}"
            )


def sdpa_inputs(query, k_cache, v_cache, tables, batch, q_len, ctx):
    """The same attention as SDPA over a contiguous [B, KVH, ctx, D] cache (the gather is not timed)."""
    heads, d = query.shape[1:]
    k = k_cache[tables.long()].flatten(1, 2)[:, :ctx].transpose(1, 2).contiguous()
    v = v_cache[tables.long()].flatten(1, 2)[:, :ctx].transpose(1, 2).contiguous()
    q = query.view(batch, q_len, heads, d).transpose(1, 2)
    mask = None
    if q_len > 1:  # causal, aligned to the end of the context
        mask = (
            torch.arange(ctx, device=q.device)[None, :]
            <= (ctx - q_len + torch.arange(q_len, device=q.device))[:, None]
        )
    return q, k, v, mask


def bench_attention(cases, heads, kv_heads, head_dim, page, dtype, device, check_graph):
    rows = []
    for batch, q_len, ctx in cases:
        query, k_cache, v_cache, tables, qsl, seq_lens = make_batch(
            [q_len] * batch, [ctx] * batch, heads, kv_heads, head_dim, page, dtype, device
        )
        scale = head_dim**-0.5
        q_lens, s_lens = [q_len] * batch, [ctx] * batch
        ours = lambda: paged_attention_triton(query, k_cache, v_cache, tables, qsl, seq_lens, q_len, scale)  # noqa: E731
        ref = lambda: paged_attention_ref(query, k_cache, v_cache, tables, q_lens, s_lens, scale)  # noqa: E731
        q, k, v, mask = sdpa_inputs(query, k_cache, v_cache, tables, batch, q_len, ctx)
        sdpa = lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)  # noqa: E731
        out, want = ours(), ref()
        err = (out.float() - want.float()).abs().max().item()
        err_sdpa = (sdpa().transpose(1, 2).reshape(out.shape).float() - want.float()).abs().max().item()
        graph_ok, t_graph = "-", float("nan")
        if check_graph:
            static_out = torch.empty_like(out)
            paged_attention_triton(
                query, k_cache, v_cache, tables, qsl, seq_lens, q_len, scale, out=static_out
            )
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                paged_attention_triton(
                    query, k_cache, v_cache, tables, qsl, seq_lens, q_len, scale, out=static_out
                )
            static_out.zero_()
            graph.replay()
            torch.cuda.synchronize()
            graph_ok = "ok" if torch.equal(static_out, out) else "MISMATCH"
            t_graph = timed(graph.replay, device)
        t_ours, t_ref, t_sdpa = timed(ours, device), timed(ref, device), timed(sdpa, device)
        kv_bytes = 2 * batch * ctx * kv_heads * head_dim * k_cache.element_size()
        t_dev = t_graph if check_graph else t_ours
        rows.append(
            (
                batch,
                q_len,
                ctx,
                err,
                err_sdpa,
                graph_ok,
                t_ours,
                t_graph,
                t_ref,
                t_sdpa,
                kv_bytes / t_dev / 1e6,
            )
        )
    print(f"\nattention (heads {heads}, kv heads {kv_heads}, head_dim {head_dim}, block {page}, {dtype})")
    print(
        f"{'batch':>5} {'q_len':>5} {'ctx':>5} | {'maxdiff':>8} {'sdpa diff':>9} {'graph':>5} | "
        f"{'ours ms':>8} {'graph ms':>8} {'ref ms':>8} {'sdpa ms':>8} | "
        f"{'GB/s':>5} {'vs ref':>6} {'vs sdpa':>7}"
    )
    for b, ql, c, e, es, gok, to, tg, tr, ts, bw in rows:
        print(
            f"{b:>5} {ql:>5} {c:>5} | {e:8.1e} {es:9.1e} {gok:>5} | "
            f"{to:8.4f} {tg:8.4f} {tr:8.4f} {ts:8.4f} | "
            f"{bw:5.0f} {tr / to:5.1f}x {ts / to:6.1f}x"
        )
    print(
        "ours ms / ref ms / sdpa ms: eager calls (host launch overhead included when it exceeds the GPU\n"
        "time); graph ms: ours replayed from a CUDA graph (device time); GB/s: K/V bytes over graph ms\n"
        "(over ours ms in dry-run)"
    )
    return rows


def bench_fused(tokens_list, hidden, inter, heads, kv_heads, head_dim, dtype, device):
    print(f"\nfused ops (hidden {hidden}, intermediate {inter}, {dtype})")
    print(f"{'op':>18} {'tokens':>6} | {'maxdiff':>8} | {'ours ms':>8} {'ref ms':>8} {'speedup':>7}")
    cache = rope_cos_sin_cache(rope_inv_freq(head_dim, 10000.0), 8192).to(device)
    for t in tokens_list:
        x = torch.randn(t, hidden, device=device).to(dtype)
        r = torch.randn(t, hidden, device=device).to(dtype)
        w = (1 + 0.1 * torch.randn(hidden, device=device)).to(dtype)
        qkv = torch.randn(t, heads + 2 * kv_heads, head_dim, device=device).to(dtype)
        q, k, v = qkv[:, :heads], qkv[:, heads : heads + kv_heads], qkv[:, heads + kv_heads :]
        pos = torch.randint(0, 8192, (t,), device=device)
        k_cache = torch.zeros(t // 16 + 2, 16, kv_heads, head_dim, device=device, dtype=dtype)
        v_cache, k_ref, v_ref = torch.zeros_like(k_cache), torch.zeros_like(k_cache), torch.zeros_like(k_cache)
        slots = torch.randperm(k_cache.shape[0] * 16, device=device)[:t]
        gu = torch.randn(t, 2 * inter, device=device).to(dtype)
        ops = [
            (
                "rms_norm",
                lambda: triton_fused.rms_norm(x, w, 1e-5),
                lambda: fused_ref.rms_norm_ref(x, w, 1e-5),
            ),
            (
                "fused_add_rms_norm",
                lambda: triton_fused.fused_add_rms_norm(x, r, w, 1e-5),
                lambda: fused_ref.fused_add_rms_norm_ref(x, r, w, 1e-5),
            ),
            (
                "rope_and_write_kv",
                lambda: triton_fused.rope_and_write_kv(pos, q, k, v, cache, k_cache, v_cache, slots),
                lambda: fused_ref.rope_and_write_kv_ref(pos, q, k, v, cache, k_ref, v_ref, slots),
            ),
            ("silu_and_mul", lambda: triton_fused.silu_and_mul(gu), lambda: fused_ref.silu_and_mul_ref(gu)),
        ]
        for name, ours, ref in ops:
            a, b = ours(), ref()
            a, b = (a, b) if isinstance(a, tuple) else ((a,), (b,))
            err = max((u.float() - v.float()).abs().max().item() for u, v in zip(a, b, strict=True))
            to, tr = timed(ours, device), timed(ref, device)
            print(f"{name:>18} {t:>6} | {err:8.1e} | {to:8.4f} {tr:8.4f} {tr / to:6.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dry-run", action="store_true", help="CPU + Triton interpreter, tiny shapes, fp32")
    parser.add_argument("--skip-fused", action="store_true")
    args = parser.parse_args()
    if args.dry_run:
        device, dtype = torch.device("cpu"), torch.float32
        heads, kv_heads, head_dim, page = 4, 1, 64, 16
        decode = [(b, 1, c) for b in (1, 2) for c in (40, 100)]
        verify = [(1, 1 + k, 64) for k in (3, 7)]
        fused_shape = dict(tokens_list=[3], hidden=64, inter=96, heads=4, kv_heads=1, head_dim=64)
    else:
        if not torch.cuda.is_available():
            sys.exit("no CUDA device: use --dry-run for the CPU interpreter check")
        device, dtype = torch.device("cuda"), torch.bfloat16
        heads, kv_heads, head_dim, page = 32, 8, 128, 16
        decode = [(b, 1, c) for b in (1, 8, 64) for c in (512, 2048, 8192)]
        verify = [(b, 1 + k, c) for b in (1, 8) for c in (2048, 8192) for k in (3, 5, 7)]
        fused_shape = dict(
            tokens_list=[1, 64, 1024], hidden=4096, inter=14336, heads=32, kv_heads=8, head_dim=128
        )
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    torch.manual_seed(0)
    with torch.inference_mode(mode=not args.dry_run):
        if device.type == "cuda":
            check_sweep(device)
        bench_attention(
            decode + verify, heads, kv_heads, head_dim, page, dtype, device, check_graph=device.type == "cuda"
        )
        if not args.skip_fused:
            bench_fused(dtype=dtype, device=device, **fused_shape)


if __name__ == "__main__":
    main()
