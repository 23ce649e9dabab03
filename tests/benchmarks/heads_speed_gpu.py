"""End-to-end speed of the speculative methods on SmolLM2-135M-Instruct, batch 1, greedy, MT-Bench first turns
(run on a CUDA machine), in one process against our own plain decoding:

    python tests/benchmarks/heads_speed_gpu.py [--eagle3 HEAD] [--mlp SPECULATOR] [--limit 80] [--max-tokens 256] \
        [--out results.json]

Methods: plain, ngram (k = 5, lookup 2..4), eagle3 (the shipped head by default; k = 3, 4, 5), mlp_speculator
(k = 3), each also as "<label> host": async scheduling off, so drafting on the host between steps instead of on
the device inside the verify graph (the A/B of device drafting). For each: tokens/s end to end over the answers (one request at a time, stopping at EOS or
--max-tokens), the decode phase alone (first tokens timed apart), tokens per engine step, mean acceptance length,
the speedup over plain, the output identical to plain or not, and the cap acceptance puts on the speedup:
tokens per step x plain decode step time / this method's step time is what the speedup would be if acceptance
alone decided it (printed as `step cost`: this method's step time over plain's).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from gpu_compare import answers, release  # noqa: E402
from tokenleap import LLM  # noqa: E402
from tokenleap.bench.prompts import load_mtbench  # noqa: E402


def methods(eagle3: str, mlp: str) -> dict[str, dict | None]:
    out: dict[str, dict | None] = {"plain": None,
                                   "ngram k=5": {"method": "ngram", "num_speculative_tokens": 5,
                                                 "prompt_lookup_min": 2, "prompt_lookup_max": 4}}
    for k in (3, 4, 5):
        out[f"eagle3 k={k}"] = {"method": "eagle3", "model": eagle3, "num_speculative_tokens": k}
    out["mlp_speculator k=3"] = {"method": "mlp_speculator", "model": mlp, "num_speculative_tokens": 3}
    # the same methods drafting on the host (async scheduling off: no device drafter, steps not launched ahead)
    for label in [m for m in out if m != "plain"]:
        out[f"{label} host"] = out[label]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--eagle3", default="smollm2-135m-instruct-eagle3")
    ap.add_argument("--mlp", default="smollm2-135m-instruct-mlp")
    ap.add_argument("--limit", type=int, default=80, help="MT-Bench first turns used")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--only", default="", help="comma list of method labels to run (plain always runs)")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("heads_speed_gpu.py needs a CUDA device", file=sys.stderr)
        return 2
    chats = [[{"role": "user", "content": q}] for q in load_mtbench(a.limit)]
    only = set(filter(None, a.only.split(",")))
    results: dict[str, dict] = {"device": torch.cuda.get_device_name(), "prompts": len(chats),
                                "max_tokens": a.max_tokens, "methods": {}}
    plain = None
    for label, spec in methods(a.eagle3, a.mlp).items():
        if spec is not None and only and label not in only:
            continue
        try:
            llm = LLM(model=a.model, max_num_seqs=1, disable_log_stats=True, speculative_config=spec,
                      async_scheduling=not label.endswith(" host"))
            got = answers(llm, chats, a.max_tokens)
            c = llm.engine.counters.spec
        except Exception as e:  # noqa: BLE001 - one method's failure must not lose the others' figures
            print(f"{label}: FAILED {type(e).__name__}: {e}", flush=True)
            results["methods"][label] = {"error": f"{type(e).__name__}: {e}"}
            continue
        outputs = got.pop("outputs")
        if plain is None:
            plain = dict(got, outputs=outputs)
        else:
            got.update(identical=outputs == plain["outputs"], speedup=got["tokens_per_s"] / plain["tokens_per_s"],
                       decode_speedup=got["decode_tokens_per_s"] / plain["decode_tokens_per_s"],
                       mean_acceptance_length=1 + c.num_accepted_tokens / max(c.num_drafts, 1))
            # step time (decode phase) of this method over plain's: (tokens/step) / (tokens/s) each
            got["step_cost"] = ((got["tokens_per_step"] / got["decode_tokens_per_s"])
                                / (plain["tokens_per_step"] / plain["decode_tokens_per_s"]))
        results["methods"][label] = got
        extra = "" if spec is None else (
            f"  {got['speedup']:.2f}x plain (decode {got['decode_speedup']:.2f}x), acceptance length "
            f"{got['mean_acceptance_length']:.2f}, {got['tokens_per_step']:.2f} tokens/step, step cost "
            f"{got['step_cost']:.2f}x plain's, identical={got['identical']}")
        print(f"{label}: {got['tokens_per_s']:.1f} tokens/s (decode {got['decode_tokens_per_s']:.1f}){extra}",
              flush=True)
        del llm
        release()
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
