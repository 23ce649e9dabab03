"""Which rows the head catches up on in a step: per request, the computed positions whose next token is known.

Row p of the head takes (embed(x_{p+1}), h_p), so a request's run feeds the tokens ``token_ids[start + 1 ..]`` at
positions ``start ..`` with the target's hidden rows ``hidden_rows ..`` of the same positions. A request drafts
from its run's last row when that row is its last computed position P = len(token_ids) - 2.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tokenleap.speculative.padded_inputs import Run
from tokenleap_plugins import ProposeRequest


@dataclass(frozen=True)
class CatchUp:
    caught: list[int]  # indices into the batch's requests of those with rows to catch up on
    runs: list[Run]  # per caught request: the next tokens x_{p+1} at positions p = start ..
    hidden_rows: list[int]  # per run: the target's hidden row of its first position (the others follow it)
    active: list[int]  # indices into ``runs`` of the drafting requests (runs that end at P, drafts wanted)


def catch_up(reqs: Sequence[ProposeRequest]) -> CatchUp:
    caught, runs, hidden_rows, active = [], [], [], []
    for i, r in enumerate(reqs):
        c = r.computed
        if c is None:
            continue
        count = min(c.count, len(r.token_ids) - 1 - c.start)
        if count <= 0:
            continue
        if r.max_num_drafts > 0 and c.start + count == len(r.token_ids) - 1:
            active.append(len(runs))
        caught.append(i)
        runs.append(Run(r.token_ids[c.start + 1 : c.start + 1 + count], c.start, r.block_ids))
        hidden_rows.append(c.hidden_rows)
    return CatchUp(caught, runs, hidden_rows, active)
