"""Whether float32 ``F.linear`` on this CPU gives a row the same bits whatever the row count of the call
(what exact greedy speculation on the default float32 CPU path would need; the bfloat16 fast path's kernels are
checked by tests/test_cpu_linear.py):

    python tests/benchmarks/cpu_float32_rows.py

For SmolLM2's and the tiny test model's shapes, with 1 and 2 threads: rows 0..m-1 computed in a call of m rows
(m from 1 to 600) against the same rows of one 600-row call, unpadded and with the call padded to at least 16,
32 or 64 rows; and rows computed in calls of exactly 16 (or 32) rows each (the last block zero-padded), starting
at row 0 or 7, against the same blocking of all 600. Prints, per shape, the rows that differ over all m.
"""

from __future__ import annotations

import tokenleap  # noqa: F401  (its oneDNN instruction-set cap, as in the engine)
import torch
from torch.nn import functional as F

SHAPES = [(64, 64), (192, 64), (960, 576), (1536, 576), (3072, 576), (576, 1536), (49152, 576)]
ROWS = (1, 2, 3, 5, 8, 13, 17, 31, 40, 64, 100, 257, 512, 600)


def blocked(x: torch.Tensor, w: torch.Tensor, rows: int) -> torch.Tensor:
    """x [M, K] @ w.T in calls of exactly ``rows`` rows (the last one zero-padded) -> [M, N]."""
    outs = []
    for s in range(0, x.shape[0], rows):
        part = x[s : s + rows]
        n = part.shape[0]
        if n < rows:
            part = torch.cat([part, part.new_zeros(rows - n, part.shape[1])])
        outs.append(F.linear(part, w)[:n])
    return torch.cat(outs)


def main() -> int:
    torch.manual_seed(0)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for n, k in SHAPES:
            w = torch.randn(n, k)
            x = torch.randn(600, k)
            ref = F.linear(x, w)  # [600, n]
            differing = {}
            for block in (16, 32):
                whole = blocked(x, w, block)
                differing[f"blocks of {block}"] = sum(
                    int((blocked(x[off : off + m], w, block) != whole[off : off + m]).any(dim=1).sum())
                    for m in ROWS[:-1] for off in (0, 7))
            for pad in (0, 16, 32, 64):
                bad = 0
                for m in ROWS:
                    out = F.linear(x[: max(m, pad)], w)[:m]
                    bad += int((out != ref[:m]).any(dim=1).sum())
                differing[f"pad {pad}" if pad else "unpadded"] = bad
            print(f"threads {threads} weight {n}x{k}: rows differing {differing}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
