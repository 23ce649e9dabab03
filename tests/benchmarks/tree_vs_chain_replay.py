"""Would tree drafts pay over chains for an EAGLE-3 head? An exact replay of acceptance on the target's own greedy
answers (CPU is enough), to set beside measured verify costs.

    python tests/benchmarks/tree_vs_chain_replay.py [--head smollm2-135m-instruct-eagle3] [--limit 40] \
        [--max-tokens 128]

Why exact: the head's training-time-test unroll (train/ttt.py) feeds, at draft step j, the true token x_{p+j+1}
and the head's own previous output, at position p + j, attending to the catch-up keys and its own chain — which
is precisely the path a tree follows along the branch that matches the target. So, from any start p, a tree that
offers the top-W_j candidates of the head at depth j (W = (W_0, ..., W_{k-1})) accepts the longest run of depths
whose true token is among those candidates; a chain is W = (1, ..., 1). Per start position this gives the
accepted length of every tree shape at once; its verify step then carries 1 + sum_j prod_{i<=j} W_i tokens.
Prints, per shape: nodes, mean tokens per step (1 + accepted, all start positions in the answers), and that
figure over the chain's.
"""

from __future__ import annotations

import argparse
import json
from math import prod

import torch

SHAPES = [(1, 1, 1, 1, 1), (2, 1, 1, 1, 1), (3, 1, 1, 1, 1), (2, 2, 1, 1, 1), (4, 1, 1, 1, 1), (2, 2, 2, 1, 1),
          (1, 1, 1), (2, 1, 1), (1, 1, 1, 1, 1, 1, 1)]


@torch.no_grad()
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--head", default="smollm2-135m-instruct-eagle3")
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--max-tokens", type=int, default=128)
    a = ap.parse_args(argv)
    from tokenleap import LLM
    from tokenleap.bench.prompts import load_mtbench
    from tokenleap_eagle.checkpoint import load_head
    from tokenleap_eagle.heads_registry import resolve_head
    from tokenleap_eagle.train.data import generate_sequences
    from tokenleap_eagle.train.loop import _features
    from tokenleap_eagle.train.ttt import ttt_forward

    llm = LLM(model=a.model, max_num_seqs=16, max_model_len=2048, disable_log_stats=True)
    seqs = generate_sequences(llm, load_mtbench(a.limit), a.max_tokens, 1024, progress=False)
    model = llm.engine.model
    head = load_head(resolve_head(a.head), dtype=torch.float32)
    lm = model.embed_tokens.weight if model.lm_head is None else model.lm_head.weight
    rows = lm[head.target_ids()].detach()  # [dv, H]
    depth = max(len(s) for s in SHAPES)
    wmax = max(max(s) for s in SHAPES)
    ranks: list[torch.Tensor] = []  # per sequence [starts, depth]: rank of the true token among the head's candidates
    for s in seqs:
        tokens, aux, final, mask = _features(model, [s], head.cfg.aux_layer_ids, llm.engine.backend, "cpu")
        res = ttt_forward(head, model.embed_tokens, rows, tokens, aux.float(), final.float(), mask, depth,
                          keep_logits=True)
        length = tokens.shape[1]
        starts = torch.arange(s.num_prompt_tokens - 1, length - 2)  # row p drafts x_{p+2}, ...; p+1 known
        r = torch.full((len(starts), depth), wmax, dtype=torch.int64)  # wmax: not among any tree's candidates
        for j in range(depth):
            ok = starts + j + 2 < length
            top = head.draft_to_target(res.step_logits[j][0, starts[ok]].topk(wmax, dim=-1).indices)  # [n, wmax]
            true = tokens[0, starts[ok] + j + 2]
            hit = (top == true[:, None]).float()
            r[ok, j] = torch.where(hit.any(-1), hit.argmax(-1), torch.full_like(true, wmax))
        ranks.append(r)
    allr = torch.cat(ranks)  # [starts, depth]
    chain = None
    out = []
    for shape in SHAPES:
        within = allr[:, : len(shape)] < torch.tensor(shape)  # [starts, len]
        accepted = within.long().cumprod(-1).sum(-1).float()
        nodes = sum(prod(shape[: j + 1]) for j in range(len(shape)))
        tps = 1 + accepted.mean().item()
        if shape == (1, 1, 1, 1, 1):
            chain = tps
        out.append({"shape": list(shape), "verify_tokens": 1 + nodes, "tokens_per_step": round(tps, 3)})
    for o in out:
        o["over_chain_k5"] = round(o["tokens_per_step"] / chain, 3)
        print(json.dumps(o))
    print(json.dumps({"start_positions": int(allr.shape[0]), "answers": len(seqs), "head": a.head}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
