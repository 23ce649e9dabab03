"""Summarise the engine process's loop trace (``TOKENLEAP_ENGINE_TRACE=PATH tokenleap serve ...`` writes
PATH.<pid>): the iterations are split into bursts (runs of work separated by more than --gap seconds idle), and
for each burst this prints its length, steps, tokens and tokens/s, where the time went (waiting for commands,
taking commands, engine steps, making deltas, sending them) and how long admission lasted (steps until nothing
waits and the batch stops growing).

    python tests/benchmarks/engine_trace_summary.py PATH.<pid> [...] [--gap 0.05] [--min-tokens 1000]
"""

from __future__ import annotations

import argparse
import json


def bursts(rows: list[dict], gap: float) -> list[list[dict]]:
    out: list[list[dict]] = []
    for r in rows:
        if not out or r["idle_s"] > gap:
            out.append([])
        out[-1].append(r)
    return out


def summary(burst: list[dict], tokens_before: int) -> dict:
    tokens = burst[-1]["generation_tokens"] - tokens_before
    wall = sum(r[k] for r in burst for k in ("idle_s", "commands_s", "step_s", "deltas_s", "send_s")) - burst[0]["idle_s"]
    peak = max(r["running"] for r in burst)
    admitted = next(i for i, r in enumerate(burst) if r["running"] == peak and r["waiting"] == 0)
    admission_s = sum(r["idle_s"] + r["commands_s"] + r["step_s"] + r["deltas_s"] + r["send_s"]
                      for r in burst[1: admitted + 1])
    decode = [r for r in burst[admitted + 1:] if r["running"] == peak]
    return {
        "start": burst[0]["time"], "end": burst[-1]["time"], "steps": len(burst), "tokens": tokens, "wall_s": round(wall, 4), "tokens_per_s": round(tokens / wall, 1),
        "peak_running": peak, "admission_steps": admitted + 1, "admission_s": round(admission_s, 4),
        "ms": {k: round(sum(r[k] for r in burst[1:]) * 1e3, 2)
               for k in ("idle_s", "commands_s", "step_s", "deltas_s", "send_s")},
        "full_batch_step_ms_median": round(sorted(r["step_s"] for r in decode)[len(decode) // 2] * 1e3, 3)
        if decode else None,
        "full_batch_deltas_send_us_median": round(sorted(r["deltas_s"] + r["send_s"] for r in decode)[len(decode) // 2]
                                                  * 1e6, 1) if decode else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--gap", type=float, default=0.05)
    ap.add_argument("--min-tokens", type=int, default=1000, help="bursts with fewer tokens are not printed")
    args = ap.parse_args()
    for path in args.paths:
        rows = [json.loads(line) for line in open(path)]
        before = 0
        print(path)
        for b in bursts(rows, args.gap):
            s = summary(b, before)
            before = b[-1]["generation_tokens"]
            if s["tokens"] >= args.min_tokens:
                print(" ", json.dumps(s))


if __name__ == "__main__":
    main()
