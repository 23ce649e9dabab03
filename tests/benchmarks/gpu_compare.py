"""The whole GPU comparison in one command (run on a CUDA machine):

    python tests/benchmarks/gpu_compare.py --smollm2 PATH/TO/SmolLM2-135M-Instruct.Q4_1.gguf --out results.json

Measures, in one process on one GPU, and prints one table:
- device-to-device copy bandwidth (read + write bytes / time): the memory roofline;
- Llama-3-8B shape with random bf16 weights (load_format="dummy"): batch-1 decode ms/token against the floor
  (weight bytes / bandwidth), verify steps of 1 + k tokens (k = 3, 5, 7) against a 1-token decode step, and
  batch-64 throughput against its floor (weights once per step + KV bytes read);
- SmolLM2-135M-Instruct (real weights), batch 1, greedy: transformers `generate` vs tokenleap (256 tokens per
  request, EOS ignored), and tokenleap with n-gram speculation vs without on the model's answers (stopping at
  EOS) to code-editing, module-editing and summarization prompts (token-identical output checked).
Sections can be skipped with --skip 8b,smollm2; --skip hf leaves out transformers' SmolLM2 timings (ours and
the n-gram comparison still run).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import torch
from graph_replay import graph_replay_ms  # this folder is on sys.path when run as a script
from tokenleap import LLM, SamplingParams
from tokenleap.bench.prompts import code_editing_prompts, module_editing_prompts, summarization_prompts
from tokenleap_plugins import Drafts, ProposerBase, ProposerManager, ProposerSpec, hookimpl

ANSWER_MAX_TOKENS = 512  # the answers of the ngram comparison stop at EOS, or here
DEFAULT_NGRAM = {"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 4, "prompt_lookup_min": 2}
LLAMA3_8B = dict(
    architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=128256, hidden_size=4096,
    intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
    max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False,
    bos_token_id=128000, eos_token_id=128001,
)

SMOLLM2_SHAPE = dict(
    architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=49152, hidden_size=576,
    intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
    max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True,
    bos_token_id=1, eos_token_id=2,
)


def bandwidth_tb_s() -> float:
    n = 1 << 30  # 2 GiB of bf16 per buffer
    src = torch.empty(n, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        dst.copy_(src)
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1e3 / 10
    del src, dst
    return 2 * n * 2 / seconds / 1e12


class FixedDrafts(ProposerBase):
    """Always proposes as many drafts as allowed (token 0): every step is a full 1 + k verify step."""

    def propose(self, batch):
        return Drafts([[0] * r.max_num_drafts for r in batch.requests])


def fixed_manager() -> ProposerManager:
    plugin = types.SimpleNamespace()
    plugin.tokenleap_register_proposers = hookimpl(lambda: [ProposerSpec("fixed", lambda cfg, ctx: FixedDrafts())])
    mgr = ProposerManager()
    mgr.register(plugin, name="fixed-drafts")
    return mgr


def weight_bytes(llm: LLM) -> int:
    return sum(p.numel() * p.element_size() for p in llm.engine.model.parameters())


def per_step_ms(llm: LLM, prompts, short: int, long: int, repeats: int = 3) -> float:
    """Time per engine step in steady decode: (t(long) - t(short)) / (steps(long) - steps(short)), the median
    of ``repeats`` such pairs (one pair is at the mercy of a one-off stall: a GC pause, a late compile)."""
    def run(n):
        sp = SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)
        torch.cuda.synchronize()
        steps0, t0 = llm.engine.counters.num_steps, time.perf_counter()
        llm.generate(prompts, sp, use_tqdm=False)
        torch.cuda.synchronize()
        return time.perf_counter() - t0, llm.engine.counters.num_steps - steps0
    run(long)  # warm-up: compiles every kernel variant the timed runs will use
    run(short)
    per_step = []
    for _ in range(repeats):
        t_s, n_s = run(short)
        t_l, n_l = run(long)
        per_step.append((t_l - t_s) / (n_l - n_s) * 1e3)
    print(f"  per_step_ms: {', '.join(f'{x:.3f}' for x in per_step)}", flush=True)
    return statistics.median(per_step)


def release() -> None:
    """Return the memory of engines whose last reference the caller just deleted."""
    gc.collect()
    torch.cuda.empty_cache()


def shape_llm(config: dict, name: str, **kwargs) -> LLM:
    """An LLM over random bf16 weights of a Hugging Face ``config`` (``load_format="dummy"``)."""
    folder = Path(tempfile.mkdtemp()) / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return LLM(model=str(folder), load_format="dummy", dtype="bfloat16", **kwargs)


def llama3_8b_shape_llm(**kwargs) -> LLM:
    """An LLM over random bf16 weights of the Llama-3-8B shape, max_model_len 4096."""
    return shape_llm(LLAMA3_8B, "llama3-8b-shape", max_model_len=4096, **kwargs)


def section_8b(bw: float, rows: list, results: dict) -> None:
    prompt = [{"prompt_token_ids": list(range(1000, 1128))}]  # 128 tokens
    common = dict(disable_log_stats=True)
    llm = llama3_8b_shape_llm(max_num_seqs=1, **common)
    wb = weight_bytes(llm)
    floor_ms = wb / (bw * 1e12) * 1e3
    decode_ms = per_step_ms(llm, prompt, 16, 144)
    decode_fwd = graph_replay_ms(llm, 1, 1)
    graphs = llm.engine.runner.graphs  # same weights, eager step: measured by switching the graphs off
    llm.engine.runner.graphs = None
    eager_ms = per_step_ms(llm, prompt, 8, 40)
    llm.engine.runner.graphs = graphs
    results["8b"] = dict(weight_bytes=wb, floor_ms=floor_ms, decode_ms=decode_ms, eager_decode_ms=eager_ms,
                         decode_forward_ms=decode_fwd)
    rows.append(("8B shape, batch-1 decode forward (graph replay only)", f"{decode_fwd:.2f} ms",
                 f"{decode_fwd / floor_ms:.3f}x floor"))
    rows.append(("8B shape, batch-1 decode (CUDA graphs)", f"{decode_ms:.2f} ms/token",
                 f"{decode_ms / floor_ms:.3f}x floor ({floor_ms:.2f} ms)"))
    rows.append(("8B shape, batch-1 decode (eager)", f"{eager_ms:.2f} ms/token", f"{eager_ms / floor_ms:.3f}x floor"))
    del llm
    release()
    for k in (3, 5, 7):
        llm = llama3_8b_shape_llm(max_num_seqs=1, speculative_config={"method": "fixed", "num_speculative_tokens": k},
                                  proposer_manager=fixed_manager(), **common)
        verify_ms = per_step_ms(llm, prompt, 16, 144)
        verify_fwd = graph_replay_ms(llm, 1, 1 + k)
        results["8b"][f"verify_k{k}_ms"] = verify_ms
        results["8b"][f"verify_k{k}_forward_ms"] = verify_fwd
        rows.append((f"8B shape, batch-1 verify forward 1+{k} (graph replay only)", f"{verify_fwd:.2f} ms",
                     f"{verify_fwd / decode_fwd:.3f}x decode forward"))
        rows.append((f"8B shape, batch-1 verify step, 1+{k} tokens", f"{verify_ms:.2f} ms/step",
                     f"{verify_ms / decode_ms:.3f}x decode step"))
        del llm
    release()
    llm = llama3_8b_shape_llm(max_num_seqs=64, **common)
    prompts = [{"prompt_token_ids": [1000 + i] * 128} for i in range(64)]
    sp = SamplingParams(temperature=0, max_tokens=128, ignore_eos=True)
    llm.generate(prompts, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True), use_tqdm=False)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    llm.generate(prompts, sp, use_tqdm=False)
    torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    tps = 64 * 128 / secs
    kv_token = 2 * 32 * 8 * 128 * 2
    mean_ctx = 128 + 64
    step_floor = (wb + 64 * mean_ctx * kv_token) / (bw * 1e12)
    floor_tps = 64 / step_floor
    results["8b"].update(batch64_tokens_per_s=tps, batch64_floor_tokens_per_s=floor_tps)
    rows.append(("8B shape, batch 64, 128 in / 128 out (incl. prefill)", f"{tps:,.0f} tokens/s",
                 f"{tps / floor_tps:.2f} of floor ({floor_tps:,.0f} tokens/s)"))
    del llm
    release()


def hf_generate_tps(model, tok, chats, max_new: int, **kw) -> tuple[float, list[list[int]]]:
    outs, total, secs = [], 0, 0.0
    for chat in chats:
        ids = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        ids = ids["input_ids"].to("cuda")
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model.generate(ids, max_new_tokens=max_new, min_new_tokens=max_new, do_sample=False, **kw)
        torch.cuda.synchronize()
        secs += time.perf_counter() - t0
        outs.append(out[0, ids.shape[1]:].tolist())
        total += out.shape[1] - ids.shape[1]
    return total / secs, outs


def warm_up(llm: LLM, chats, ignore_eos: bool) -> None:
    """Two short runs of ``chats``: cold, then warm prefix cache, so every kernel variant is compiled before
    timing."""
    for _ in range(2):
        llm.chat(chats, SamplingParams(temperature=0, max_tokens=16, ignore_eos=ignore_eos), use_tqdm=False)


def timed_chat(llm: LLM, chat, params: SamplingParams) -> tuple[float, int, list[int]]:
    """One request alone: (seconds, engine steps, token ids)."""
    torch.cuda.synchronize()
    t0, steps0 = time.perf_counter(), llm.engine.counters.num_steps
    o = llm.chat([chat], params, use_tqdm=False)[0]
    torch.cuda.synchronize()
    return time.perf_counter() - t0, llm.engine.counters.num_steps - steps0, list(o.outputs[0].token_ids)


def ours_tps(llm: LLM, chats, max_new: int):
    """Batch-1 greedy tokens/s over ``chats``, one request at a time, each generating exactly ``max_new`` tokens
    (EOS ignored, as transformers' ``min_new_tokens``): decode speed, prefill included."""
    warm_up(llm, chats, ignore_eos=True)
    sp = SamplingParams(temperature=0, max_tokens=max_new, ignore_eos=True)
    runs = [timed_chat(llm, chat, sp) for chat in chats]
    return sum(len(ids) for _, _, ids in runs) / sum(t for t, _, _ in runs), [ids for _, _, ids in runs]


def answers(llm: LLM, chats, max_new: int) -> dict:
    """The model's own answers (stopping at EOS, at most ``max_new`` tokens), one request at a time, back to
    back: tokens/s end to end (one clock over all of them: a step the engine left on the device behind a finished
    request delays the next request's launch, and the last one is waited for before the clock stops) and in the
    decode phase (the first tokens' time, measured by 1-token runs before, taken out), tokens per engine step
    (prefill steps included), and the token ids."""
    warm_up(llm, chats, ignore_eos=False)
    first_secs = sum(timed_chat(llm, chat, SamplingParams(temperature=0, max_tokens=1))[0] for chat in chats)
    params = SamplingParams(temperature=0, max_tokens=max_new)
    torch.cuda.synchronize()
    t0, steps0 = time.perf_counter(), llm.engine.counters.num_steps
    outs = [list(llm.chat([chat], params, use_tqdm=False)[0].outputs[0].token_ids) for chat in chats]
    torch.cuda.synchronize()
    secs, steps = time.perf_counter() - t0, llm.engine.counters.num_steps - steps0
    tokens = sum(len(ids) for ids in outs)
    return dict(tokens=tokens, tokens_per_s=tokens / secs, steps=steps, tokens_per_step=tokens / steps,
                decode_tokens_per_s=(tokens - len(chats)) / (secs - first_secs), first_token_ms=first_secs
                / len(chats) * 1e3, outputs=outs)


def section_smollm2(path: str, rows: list, results: dict, max_new: int, ngram_configs: list[dict],
                    with_hf: bool = True) -> None:
    """SmolLM2 vs transformers (fixed-length outputs), then ngram vs our plain decoding on the model's own
    answers to three prompt sets (speculation is about the answer: with EOS ignored a small chat model goes on
    to invent new conversations, which no prompt lookup can draft)."""
    from tokenleap.model.loader import load_checkpoint
    from transformers import LlamaConfig, LlamaForCausalLM

    def to_chats(prompts):
        return [[{"role": "user", "content": p}] for p in prompts]

    speed_sets = {"code-editing": to_chats(code_editing_prompts()[:5]),
                  "summarization": to_chats(summarization_prompts()[:5])}
    answer_sets = {"code-editing": to_chats(code_editing_prompts()),
                   "module-editing": to_chats(module_editing_prompts()),
                   "summarization": to_chats(summarization_prompts())}
    res = results.setdefault("smollm2", {})
    hf_tps = {}
    if with_hf:
        ckpt = load_checkpoint(path, dtype="bfloat16", device="cuda")
        hf = LlamaForCausalLM(LlamaConfig(**ckpt.hf_config)).to(torch.bfloat16)
        hf.load_state_dict(ckpt.weights, strict=False)
        hf = hf.cuda().eval()
        for name, cs in speed_sets.items():
            hf_generate_tps(hf, ckpt.tokenizer, cs[:2], 16)  # warm-up
            hf_tps[name], _ = hf_generate_tps(hf, ckpt.tokenizer, cs, max_new)
        del hf, ckpt
        release()
    base = LLM(model=path, max_num_seqs=1, disable_log_stats=True)
    for name, cs in speed_sets.items():
        tps, _ = ours_tps(base, cs, max_new)
        res.setdefault("decode", {})[name] = dict(hf_tps=hf_tps.get(name), ours_tps=tps)
        if name in hf_tps:
            rows.append((f"SmolLM2 {name}, {max_new} tokens: transformers generate", f"{hf_tps[name]:.1f} tokens/s",
                         ""))
        rows.append((f"SmolLM2 {name}, {max_new} tokens: tokenleap", f"{tps:.1f} tokens/s",
                     f"{tps / hf_tps[name]:.1f}x transformers" if name in hf_tps else ""))
    plain = {name: answers(base, cs, ANSWER_MAX_TOKENS) for name, cs in answer_sets.items()}
    del base
    release()
    for name, p in plain.items():
        res.setdefault("answers", {})[name] = dict(plain={k: v for k, v in p.items() if k != "outputs"}, ngram={})
        rows.append((f"SmolLM2 {name} answers: tokenleap", f"{p['tokens_per_s']:.1f} tokens/s",
                     f"{p['tokens']} tokens, decode phase {p['decode_tokens_per_s']:.1f} tokens/s, "
                     f"first token {p['first_token_ms']:.1f} ms"))
    for spec_cfg in ngram_configs:
        spec = LLM(model=path, max_num_seqs=1, disable_log_stats=True, speculative_config=spec_cfg)
        label = ",".join(f"{k}={v}" for k, v in spec_cfg.items() if k != "method")
        for name, cs in answer_sets.items():
            steps_before = spec.engine.counters.num_steps
            before = {m.name: getattr(m, "value", None) for m in spec.get_metrics()}
            got = answers(spec, cs, ANSWER_MAX_TOKENS)
            after = {m.name: getattr(m, "value", None) for m in spec.get_metrics()}
            all_steps = spec.engine.counters.num_steps - steps_before  # warm-up and first-token runs too
            drafts, acc = (after[f"tokenleap:spec_decode_num_{n}"] - before[f"tokenleap:spec_decode_num_{n}"]
                           for n in ("drafts", "accepted_tokens"))
            p = plain[name]
            same = got.pop("outputs") == p["outputs"]
            got.update(mean_acceptance_length=1 + acc / drafts if drafts else 1.0, identical=same,
                       steps_with_drafts=drafts / all_steps,
                       speedup=got["tokens_per_s"] / p["tokens_per_s"],
                       decode_speedup=got["decode_tokens_per_s"] / p["decode_tokens_per_s"])
            res["answers"][name]["ngram"][label] = got
            rows.append((f"SmolLM2 {name} answers: tokenleap + ngram {label}", f"{got['tokens_per_s']:.1f} tokens/s",
                         f"{got['speedup']:.2f}x ours (decode phase {got['decode_speedup']:.2f}x), "
                         f"{got['tokens_per_step']:.2f} tokens per step (plain {p['tokens_per_step']:.2f}), "
                         f"acceptance length {got['mean_acceptance_length']:.2f} on the "
                         f"{got['steps_with_drafts']:.0%} of steps with drafts, identical={same}"))
        del spec
        release()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smollm2", help="path to SmolLM2-135M-Instruct.Q4_1.gguf (or an alias)")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--skip", default="", help="comma list of sections to skip: 8b, smollm2, hf")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--ngram-configs", default=json.dumps([DEFAULT_NGRAM]),
                    help="JSON list of speculative_config dicts to compare (default: %(default)s)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_compare.py needs a CUDA device", file=sys.stderr)
        return 2
    skip = set(filter(None, args.skip.split(",")))
    rows: list[tuple[str, str, str]] = []
    results: dict = {"device": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d"),
                     "torch": torch.__version__, "cpu_affinity": sorted(os.sched_getaffinity(0)),
                     "cpu_count": os.cpu_count()}  # a run under `taskset -c N` shows one core here
    bw = bandwidth_tb_s()
    results["bandwidth_tb_s"] = bw
    rows.append(("device-to-device copy bandwidth", f"{bw:.2f} TB/s", results["device"]))
    for name, fn in (("8b", lambda: section_8b(bw, rows, results)),
                     ("smollm2", lambda: section_smollm2(args.smollm2, rows, results, args.max_new_tokens,
                                                      json.loads(args.ngram_configs), "hf" not in skip))):
        if name in skip or (name == "smollm2" and not args.smollm2):
            continue
        try:
            fn()
        except Exception as exc:  # report and go on: one broken section must not hide the others
            import traceback

            traceback.print_exc()
            rows.append((f"section {name} FAILED", type(exc).__name__, str(exc)[:80]))
    width = max(len(r[0]) for r in rows)
    print()
    for what, figure, ratio in rows:
        print(f"{what:<{width}}  {figure:>22}  {ratio}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
