"""Time the few-row linear kernels (triton_linear) against torch on SmolLM2-135M and Llama-3-8B shapes (CUDA).

    python tests/benchmarks/bench_linear_gpu.py [--out FILE.json] [--sweep]

Per layer and M in 1/4/8/16 rows, bf16, microseconds per call, each taken from a CUDA graph of 100
captured calls (replayed, median of 5 replays, divided by 100): torch ``F.linear`` vs ``linear_small_m``;
unfused (``triton_fused`` rms norm / silu-and-mul, then ``F.linear``), the same with ``linear_small_m``
(unf+ours: the engine's path for silu-and-mul and for hidden sizes over 1024), and the fused kernel (RMSNorm
only); the floor is weight bytes / 3.0 TB/s (a copy's
bandwidth: a pure read stream can beat it by a few percent). The calls cycle through enough copies of the weight
(>= 128 MB) that they come from memory, not from the 50 MB L2, as in a real decode step. err: max abs
difference from torch / from the unfused path. Then: row m's bits alone, in a batch of 3 and of 16 (must
be equal). ``--sweep`` then times candidate tiles per shape and M and prints the best ones;
``--engine-variants`` (alone) times them for SmolLM2's layers as the graphed engine runs them instead (the norm
fused with the qkv projection, RoPE and the KV write; with gate/up and SwiGLU; o_proj; down).

Needs the tokenleap package (on the lent GPU machine: ``source scripts/gpu_env.sh``): the few-row kernels share
their SwiGLU / RoPE epilogue maths with ``triton_fused``.
"""

from __future__ import annotations

# ruff: noqa: B023  (the lambdas are timed within the loop iteration that defines them)
import argparse
import json
import os
import statistics
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenleap.kernels import triton_fused as tfused
from tokenleap.kernels import triton_linear as tlin

BANDWIDTH = 3.0e12  # bytes/s, H100 device-to-device copy (DESIGN.md)
ROWS = (1, 4, 8, 16)
EPS = 1e-5
FUSED = ("rms", "norm")  # prologues with a fused kernel (add_rms_norm_linear); "silu" is timed unfused only
SHAPES = [  # model, layer, N, K, prologue before it ("rms": with residual, "norm": without, "silu", None)
    ("SmolLM2-135M", "qkv", 960, 576, "rms"),
    ("SmolLM2-135M", "o_proj", 576, 576, None),
    ("SmolLM2-135M", "gate_up", 3072, 576, "rms"),
    ("SmolLM2-135M", "down", 576, 1536, "silu"),
    ("SmolLM2-135M", "lm_head", 49152, 576, "norm"),
    ("Llama-3-8B", "qkv", 6144, 4096, "rms"),
    ("Llama-3-8B", "o_proj", 4096, 4096, None),
    ("Llama-3-8B", "gate_up", 28672, 4096, "rms"),
    ("Llama-3-8B", "down", 4096, 14336, "silu"),
    ("Llama-3-8B", "lm_head", 128256, 4096, "norm"),
]


def sweep_tiles(warps=(4,), stages=(3, 5), block_k=(256,)) -> list[tuple[int, int, int, int]]:
    """Candidate (BLOCK_N, BLOCK_K, warps, stages) tiles. BLOCK_K fixes the K order, hence the bits: a sweep
    reports the tiles whose results differ from the default tile's."""
    return [(bn, bk, w, s) for bn in (16, 32, 64, 128) for bk in block_k for w in warps for s in stages]


class Layer:
    """Random bf16 weights of one layer (with stream=True, copies of them totalling >= 128 MB, so that calls
    cycling through them read memory, not L2) and activations for m rows (``set_rows``)."""

    def __init__(self, n, k, prologue, device, stream=True, seed=0):
        self.g = torch.Generator(device=device).manual_seed(seed)
        self.n, self.k, self.prologue, self.device = n, k, prologue, device
        w = self.rand(n, k, scale=k**-0.5)
        extra = min(99, -(-(128 << 20) // w.nbytes) - 1) if stream else 0
        self.weights = [w] + [w.clone() for _ in range(extra)]
        self.nw = 1 + 0.1 * self.rand(k)

    def rand(self, *shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=self.g, device=self.device)).to(torch.bfloat16)

    def set_rows(self, m):
        self.m, k = m, self.k
        self.x, self.gate_up = self.rand(m, k), self.rand(m, 2 * k, scale=2.0)
        self.res = self.rand(m, k) if self.prologue == "rms" else None
        return self

    def torch_linear(self, i=0):
        return F.linear(self.x, self.weights[i])

    def ours(self, i=0, tile=None, x=None):
        return tlin._launch(tlin._PLAIN, self.x if x is None else x, self.weights[i], tile=tile)[0]

    def unfused(self, i=0, ours=False):
        if self.prologue == "silu":
            h = tfused.silu_and_mul(self.gate_up)
        elif self.res is None:
            h = tfused.rms_norm(self.x, self.nw, EPS)
        else:
            h, _ = tfused.fused_add_rms_norm(self.x, self.res, self.nw, EPS)
        return self.ours(i, x=h) if ours else F.linear(h, self.weights[i])

    def fused(self, i=0, tile=None):
        return tlin._launch(tlin._RMS, self.x, self.weights[i], None, self.res, self.nw, EPS, tile=tile)[0]


ENGINE_VARIANTS = [  # SmolLM2-135M's graphed layer as the engine runs it: (layer, N, K, epilogue)
    ("qkv+rope", 960, 576, "rope"),
    ("gate_up+swiglu", 3072, 576, "swiglu"),
    ("o_proj", 576, 576, None),
    ("down", 576, 1536, None),
]
HEADS, KV_HEADS, HEAD_DIM = 9, 3, 64  # SmolLM2-135M


class EngineLayer(Layer):
    """A layer of ENGINE_VARIANTS: the fused norm with its epilogue (RoPE + KV write, or SwiGLU), or plain."""

    def __init__(self, n, k, epilogue, device, stream=True):
        super().__init__(n, k, "rms" if epilogue else None, device, stream=stream)
        self.epilogue = epilogue
        self.caches = [torch.zeros(64, 16, KV_HEADS, HEAD_DIM, dtype=torch.bfloat16, device=device) for _ in range(2)]
        self.cos_sin = torch.randn(4096, HEAD_DIM, generator=self.g, device=device)

    def set_rows(self, m):
        super().set_rows(m)
        self.positions = torch.arange(100, 100 + m, device=self.device)  # made here: a call launches one kernel
        self.slots = torch.arange(20, 20 + m, device=self.device)
        return self

    def run(self, i=0, tile=None):
        if self.epilogue is None:
            return self.ours(i, tile=tile)
        rope = None
        if self.epilogue == "rope":
            rope = dict(positions=self.positions, cos_sin_cache=self.cos_sin, slot_mapping=self.slots,
                        k_cache=self.caches[0], v_cache=self.caches[1], head_dim=HEAD_DIM, num_heads=HEADS,
                        num_kv_heads=KV_HEADS)
        return tlin._launch(tlin._RMS, self.x, self.weights[i], None, self.res, self.nw, EPS, tile=tile,
                            swiglu=self.epilogue == "swiglu", rope=rope)[0]

    def default_tile(self):
        return default_tile(self.n, self.k, self.prologue, self.m)


def _compile_engine_variant(job) -> str | None:
    """Worker: build one (layer, rows, tile) variant of ENGINE_VARIANTS so the main process finds it cached."""
    index, m, tile = job
    _, n, k, epilogue = ENGINE_VARIANTS[index]
    try:
        layer = EngineLayer(64 if epilogue != "rope" else n, k, epilogue, torch.device("cuda"), stream=False)
        layer.set_rows(m).run(tile=tile)
        torch.cuda.synchronize()
    except Exception as e:
        return f"{type(e).__name__}: {str(e)[:120]}"
    return None


def sweep_engine_variants(device, tiles, rows=(1, 16)) -> list[dict]:
    """Time every tile for SmolLM2's layers as the graphed engine runs them (ENGINE_VARIANTS), per row count;
    tiles whose bits differ from the default tile's are marked (a BLOCK_K other than the default's)."""
    jobs = [(i, m, t) for i, (_, _, _, ep) in enumerate(ENGINE_VARIANTS) for m in rows for t in tiles
            if ep != "rope" or t[0] == 16]  # the RoPE epilogue always takes 16 columns
    failed = set(precompile(jobs, _compile_engine_variant))
    print(f"\nengine variants (SmolLM2-135M): us per call (CUDA graph), best tiles (BLOCK_N, BLOCK_K, warps, "
          f"stages); {len(failed)} failed")
    results = []
    for index, (name, n, k, epilogue) in enumerate(ENGINE_VARIANTS):
        layer = EngineLayer(n, k, epilogue, device)
        for m in rows:
            layer.set_rows(m)
            default = layer.default_tile()
            mine = [job[2] for job in jobs if job[:2] == (index, m) and job not in failed]
            times = time_tiles(layer.run, len(layer.weights), mine, default, f"{name:>15} M={m:<2}")
            results.append({"layer": name, "M": m, "times": times, "default": str(default)})
    return results


def graph_us(fn, copies: int, calls: int = 100, reps: int = 5) -> float:
    """Microseconds per call of fn(i) (i cycling through the weight copies), from a captured CUDA graph."""
    for i in range(copies):
        fn(i)  # compile / load outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            fn(i % copies)
    graph.replay()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)
    return statistics.median(times)


def time_tiles(op, copies: int, tiles, default, label: str) -> dict[str, float]:
    """us per call of ``op(i, tile=t)`` for each tile (CUDA graph), printed on one line after ``label`` with the
    default tile's time, the three fastest, and the tiles whose bits differ from the default's (expected only
    where BLOCK_K differs); -> {str(tile): us}."""
    want = op(tile=default)
    times, differ = {}, []
    for tile in tiles:
        try:
            times[tile] = graph_us(lambda i, t=tile: op(i, tile=t), copies, reps=3)
            if not torch.equal(op(tile=tile), want):
                differ.append(tile)
        except Exception as e:
            print(f"  {tile}: {type(e).__name__}")
    shown = ", ".join(f"{t} {times[t]:.2f}" for t in sorted(times, key=times.get)[:3])
    print(f"{label} default {default} {times.get(default, float('nan')):.2f} | best {shown}"
          + (f" | bits differ: {differ}" if differ else ""), flush=True)
    return {str(t): v for t, v in times.items()}


def _compile_one(job) -> str | None:
    """Worker: build (and launch once, on a 64-row weight) one kernel variant so the main process finds it in
    Triton's cache. Same argument specializations as the real calls (all N, K here are multiples of 16)."""
    prologue, m, k, tile = job
    layer = Layer(64, k, prologue, torch.device("cuda"), stream=False).set_rows(m)
    try:
        layer.fused(tile=tile) if prologue in FUSED else layer.ours(tile=tile)
        torch.cuda.synchronize()
    except Exception as e:  # e.g. a tile that needs more shared memory than the SM has
        return f"{type(e).__name__}: {str(e)[:120]}"
    return None


def precompile(jobs, compile_one=None) -> dict:
    """Compile the kernel variants in parallel processes (serial compiles would take minutes): ``compile_one(job)``
    (default ``_compile_one``) -> error text or None; returns {failed job: error}."""
    jobs = sorted(set(jobs), key=str)
    workers = max(1, min(14, (os.cpu_count() or 2) - 2))
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        return {job: err for job, err in zip(jobs, pool.map(compile_one or _compile_one, jobs)) if err}


def default_tile(n, k, prologue, m=tlin.MAX_ROWS):  # what the kernels pick for this layer and row count
    return tlin.tile_for(n, k, tlin._RMS if prologue in FUSED else tlin._PLAIN, 1 if m == 1 else tlin.MAX_ROWS)


def sweep(device, tiles, models=None, rows=ROWS) -> list[dict]:
    """Time every tile of ``tiles`` for linear_small_m and the fused op per shape (of ``models``, default all)
    and M (in ``rows``)."""
    shapes = [s for s in SHAPES if models is None or s[0] in models]
    runs = [(model, name, n, k, None, m) for model, name, n, k, _ in shapes for m in rows]
    runs += [(model, name, n, k, p, m) for model, name, n, k, p in shapes if p in FUSED for m in rows]
    failed = precompile((p, m, k, tile) for *_, k, p, m in runs for tile in tiles)
    results = []
    print(f"\nsweep: us per call (CUDA graph), best tiles (BLOCK_N, BLOCK_K, warps, stages); {len(failed)} failed")
    layers = {}
    for model, name, n, k, p, m in runs:
        if (n, k) not in layers:
            layers = {(n, k): Layer(n, k, p, device)}  # one shape's weights at a time
        layer = layers[(n, k)]
        layer.prologue = p
        layer.set_rows(m)
        op = layer.fused if p else layer.ours
        default = default_tile(n, k, p, m)
        mine = [tile for tile in tiles if (p, m, k, tile) not in failed]
        times = time_tiles(op, len(layer.weights), mine, default, f"{model:>13} {name:>8} {p or 'plain':>5} M={m:<2}")
        results.append({"model": model, "layer": name, "prologue": p, "M": m, "times": times, "default": str(default)})
    return results


def bench(device) -> list[dict]:
    failed = precompile((p, m, k, default_tile(n, k, p, m)) for *_, n, k, pro in SHAPES for m in ROWS for p in {None, pro})
    if failed:
        print("compile failures:", failed)
    rows = []
    print(f"\n{'model':>13} {'layer':>8} {'N':>6} {'K':>5} {'M':>2} | {'torch':>6} {'ours':>6} | {'unfused':>7} "
          f"{'unf+ours':>8} {'fused':>6} ({'kind':>4}) | {'floor':>6} | {'err ours':>8} {'err fused':>9}")
    for model, name, n, k, pro in SHAPES:
        layer = Layer(n, k, pro, device)
        for m in ROWS:
            layer.set_rows(m)
            copies = len(layer.weights)
            row = {"model": model, "layer": name, "N": n, "K": k, "M": m, "prologue": pro,
                   "floor_us": n * k * 2 / BANDWIDTH * 1e6,
                   "torch_us": graph_us(layer.torch_linear, copies), "ours_us": graph_us(layer.ours, copies),
                   "err_ours": (layer.ours().float() - layer.torch_linear().float()).abs().max().item()}
            if pro:
                row["unfused_us"] = graph_us(layer.unfused, copies)
                row["unfused_ours_us"] = graph_us(lambda i: layer.unfused(i, ours=True), copies)
            if pro in FUSED:
                row["fused_us"] = graph_us(layer.fused, copies)
                row["err_fused"] = (layer.fused().float() - layer.unfused().float()).abs().max().item()
            rows.append(row)
            fmt = lambda key, w=6: f"{row[key]:{w}.2f}" if key in row else f"{'-':>{w}}"  # noqa: E731
            print(f"{model:>13} {name:>8} {n:>6} {k:>5} {m:>2} | {row['torch_us']:6.2f} {row['ours_us']:6.2f} | "
                  f"{fmt('unfused_us', 7)} {fmt('unfused_ours_us', 8)} {fmt('fused_us')} ({pro or '-':>4}) | {row['floor_us']:6.2f} | "
                  f"{row['err_ours']:8.4f} {fmt('err_fused', 9)}", flush=True)
    return rows


def bitwise_across_m(device) -> dict:
    """Row m alone, with two other rows, and in a batch of 16: the same bits, for each op and shape."""
    out = {}
    for model, name, n, k, pro in SHAPES:
        if n * k > 64 << 20:
            continue  # the lm_heads: same code as the other shapes, and slow to set up
        full = Layer(n, k, pro, device, stream=False, seed=1).set_rows(16)
        alone, mixed = (Layer(16, k, pro, device, stream=False, seed=m).set_rows(m) for m in (1, 3))
        ok = True
        for mm in (0, 7, 15):
            for part in (alone, mixed):
                last = part.m - 1
                for attr in ("x", "res", "gate_up"):  # put row mm of the full batch last in the smaller one
                    if getattr(full, attr) is not None:
                        getattr(part, attr)[last] = getattr(full, attr)[mm]
                part.weights, part.nw = full.weights[:1], full.nw
                ok &= torch.equal(part.ours()[last], full.ours()[mm])
                if pro in FUSED:
                    ok &= torch.equal(part.fused()[last], full.fused()[mm])
        out[f"{model} {name}"] = bool(ok)
    print("\nbitwise equal across M (row alone / in 3 rows / in 16 rows):",
          "yes" if all(out.values()) else f"NO: {[key for key, v in out.items() if not v]}", flush=True)
    return out


def fp32_errors(device) -> dict:
    """The fp32 path (ieee tl.dot) on one shape: max abs difference from the unfused torch ops."""
    g = torch.Generator(device=device).manual_seed(4)
    x, res = (torch.randn(5, 576, generator=g, device=device) for _ in range(2))
    nw, w = 1 + 0.1 * torch.randn(576, generator=g, device=device), torch.randn(960, 576, generator=g, device=device)
    normed, _ = tfused.fused_add_rms_norm(x, res, nw, EPS)
    errs = {
        "linear": tlin.linear_small_m(x, w) - F.linear(x, w),
        "rms": tlin.add_rms_norm_linear(x, res, nw, EPS, w)[0] - F.linear(normed, w),
    }
    out = {key: e.abs().max().item() for key, e in errs.items()}
    print("fp32 max abs difference from torch (outputs ~30):", ", ".join(f"{k} {v:.2e}" for k, v in out.items()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="write the results here as JSON")
    parser.add_argument("--sweep", action="store_true", help="also time candidate tiles per shape first")
    parser.add_argument("--sweep-only", action="store_true", help="only the sweep (no bit checks, no table)")
    parser.add_argument("--models", help="sweep these models only (comma list, e.g. SmolLM2-135M)")
    parser.add_argument("--rows", default=",".join(map(str, ROWS)), help="sweep these row counts (default %(default)s)")
    parser.add_argument("--warps", default="4", help="sweep these num_warps (comma list, default %(default)s)")
    parser.add_argument("--stages", default="3,5", help="sweep these num_stages (comma list, default %(default)s)")
    parser.add_argument("--block-k", default="256", help="sweep these BLOCK_K (comma list, default %(default)s)")
    parser.add_argument("--engine-variants", action="store_true",
                        help="sweep SmolLM2's layers as the engine runs them (norm + qkv + RoPE, norm + gate/up + "
                             "SwiGLU, o_proj, down) instead of the plain / norm-only ops")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_linear_gpu.py needs a CUDA device")
    device = torch.device("cuda")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {tlin.triton.__version__}, bf16")
    results = {"device": torch.cuda.get_device_name()}
    if not (args.sweep_only or args.engine_variants):
        results["bitwise_across_m"] = bitwise_across_m(device)
        results["fp32_errors"] = fp32_errors(device)
        results["table"] = bench(device)
    ints = lambda text: tuple(int(v) for v in text.split(","))  # noqa: E731
    tiles = sweep_tiles(ints(args.warps), ints(args.stages), ints(args.block_k))
    if args.engine_variants:
        results["engine_variants"] = sweep_engine_variants(device, tiles, ints(args.rows))
    elif args.sweep or args.sweep_only:
        models = set(args.models.split(",")) if args.models else None
        results["sweep"] = sweep(device, tiles, models, ints(args.rows))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
