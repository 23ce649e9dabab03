"""Host time to build a constrained request's rows for one step (structured.constraints.add_rows: the grammar's
bitmask at each verified position, advancing along the drafts and rolling back), on SmolLM2's tokenizer with
the JSON schema of bench_grammar_engines, along a valid JSON text, for k = 0 and k = 4 drafts (all legal, so
every position gets a mask); and the CPU time of applying the bitmask to the step's logits.

    .venv/bin/python tests/benchmarks/bench_constraint_rows.py
"""

from __future__ import annotations

import statistics
import time

import torch
from bench_grammar_engines import SCHEMA, TEXT, tokenizer
from tokenleap import SamplingParams
from tokenleap.sample.logits import apply_bitmask
from tokenleap.structured.constraints import StepRows, for_request


def main() -> None:
    torch.set_num_threads(1)
    tok = tokenizer()
    ids = tok.encode(TEXT, add_special_tokens=False)
    vocab = 49152
    params = SamplingParams(structured_outputs={"json": SCHEMA})
    for k in (0, 4):
        c = for_request(params, tok, vocab, [tok.eos_token_id])
        times = []
        for pos in range(len(ids) - k):
            rows = StepRows()
            t0 = time.perf_counter()
            c.add_rows(rows, 0, ids[:pos], ids[pos : pos + k])
            times.append(time.perf_counter() - t0)
            c.accept([ids[pos]])
        masks = rows.masks[0]
        logits = torch.randn(k + 1, vocab)
        rows_dev = torch.arange(k + 1)
        apply_bitmask(logits, rows_dev, masks)
        t0 = time.perf_counter()
        for _ in range(50):
            apply_bitmask(logits, rows_dev, masks)
        apply_ms = (time.perf_counter() - t0) / 50 * 1e3
        print(f"k={k}: add_rows median {statistics.median(times) * 1e6:7.1f} us, p90 "
              f"{sorted(times)[int(0.9 * (len(times) - 1))] * 1e6:7.1f} us over {len(times)} steps; "
              f"apply_bitmask on CPU [{k + 1}, {vocab}] {apply_ms:.3f} ms")


if __name__ == "__main__":
    main()
