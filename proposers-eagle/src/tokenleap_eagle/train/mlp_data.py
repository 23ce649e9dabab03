"""Training rows for an MLP speculator, distilled from the target on conversations it reads (no generation).

The target reads each conversation once (teacher forcing) and we keep, per position ``j``, its final-normed hidden
state ``h_j`` and its greedy prediction ``y_{j+1}``. In greedy decoding the speculator sees ``(h_j, y_{j+1})`` and
must guess ``y_{j+2}, y_{j+3}, ...``: the target's own continuation. Wherever the conversation's text agrees with
the target's greedy choice (``x_{j+1} == y_{j+1}``), the next prediction ``y_{j+2}`` (read at ``h_{j+1}``) is
exactly that continuation; stage ``i`` of row ``j`` is labelled while the agreement holds for ``i + 1`` tokens,
and masked (-1) after. So every label is a token the target itself would have generated greedily, without
running the (slow, on CPU) decode loop. Sequences the target generated itself agree everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def distilled_rows(token_ids: Sequence[int], hidden: torch.Tensor, greedy: torch.Tensor, n_predict: int,
                   first: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden [n, d] (final-normed), greedy [n] (greedy[j] = y_{j+1}, the target's argmax at j) ->
    (hidden rows [r, d], tokens [r, n_predict + 1]): column 0 the fed token y_{j+1}, column i + 1 stage i's
    label y_{j+2+i} or -1. Rows from ``first`` on whose stage 0 has a label."""
    n = len(token_ids)
    x = torch.tensor(list(token_ids), dtype=torch.int64)
    agree = torch.zeros(n + n_predict + 2, dtype=torch.bool)
    agree[: n - 1] = x[1:] == greedy[: n - 1]  # agree[j]: x_{j+1} == y_{j+1}
    y = torch.full((n + n_predict + 2,), -1, dtype=torch.int64)
    y[:n] = greedy
    js = torch.arange(first, n - 1)
    cols = [y[js]]
    ok = torch.ones_like(js, dtype=torch.bool)
    for i in range(n_predict):
        ok = ok & agree[js + i]
        cols.append(torch.where(ok, y[js + 1 + i], torch.full_like(js, -1)))
    tokens = torch.stack(cols, dim=1)  # [r, n_predict + 1]
    keep = tokens[:, 1] >= 0
    return hidden[js][keep], tokens[keep]


def sharegpt_conversations(limit: int) -> list[list[dict[str, str]]]:
    """The first human and assistant turns of ShareGPT conversations, as chat messages."""
    from tokenleap.bench.prompts import dataset_file, iter_json_list

    out = []
    for conv in iter_json_list(dataset_file("sharegpt", progress=False)):
        turns = (conv.get("conversations") or []) if isinstance(conv, dict) else []
        if len(turns) >= 2 and turns[0].get("from") == "human" and turns[1].get("from") == "gpt":
            if all(isinstance(t.get("value"), str) and t["value"].strip() for t in turns[:2]):
                out.append([{"role": "user", "content": turns[0]["value"]},
                            {"role": "assistant", "content": turns[1]["value"]}])
        if len(out) >= limit:
            break
    return out


def load_target(target: str):
    """The target as a transformers model (teacher forcing runs faster there on CPU than through the paged
    engine), its LM-head matrix and tokenizer."""
    from tokenleap.model.hub import resolve_model
    from tokenleap.model.loader import load_checkpoint
    from transformers import AutoConfig, AutoModelForCausalLM

    ckpt = load_checkpoint(str(resolve_model(target, progress=False)), dtype="float32")
    hf = dict(ckpt.hf_config)
    config = AutoConfig.for_model(hf.pop("model_type"), **hf)
    model = AutoModelForCausalLM.from_config(config).eval()
    model.load_state_dict(ckpt.weights, strict=False)
    model.tie_weights()
    return model, model.get_output_embeddings().weight, ckpt.tokenizer


@torch.no_grad()
def rows_from_sequences(model, head: torch.Tensor, seqs: Sequence[Sequence[int]], n_predict: int,
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Distilled rows of every sequence: (hidden [r, d] float32, tokens [r, n_predict + 1])."""
    hs, ts = [], []
    for ids in seqs:
        hidden = model.model(input_ids=torch.tensor([list(ids)])).last_hidden_state[0]  # [n, d] final-normed
        h, t = distilled_rows(ids, hidden, (hidden @ head.T).argmax(-1), n_predict)
        hs.append(h)
        ts.append(t)
    return torch.cat(hs), torch.cat(ts)


def sharegpt_sequences(tokenizer, limit: int, max_len: int) -> list[list[int]]:
    out = []
    for conv in sharegpt_conversations(limit):
        ids = tokenizer.apply_chat_template(conv, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        out.append(list(ids)[:max_len])
    return out


@torch.no_grad()
def rows_from_engine(model, seqs: Sequence[Sequence[int]], n_predict: int, backend: str = "torch",
                     max_batch_tokens: int = 16384) -> tuple[torch.Tensor, torch.Tensor]:
    """Distilled rows of every sequence read by a tokenleap model (any device; the sequences in flat batches of at
    most ``max_batch_tokens``): (hidden [r, d] float32 on the CPU, tokens [r, n_predict + 1])."""
    from tokenleap_eagle.train.data import capture_hidden_states

    hs, ts = [], []
    start = 0
    while start < len(seqs):
        end, total = start, 0
        while end < len(seqs) and (end == start or total + len(seqs[end]) <= max_batch_tokens):
            total += len(seqs[end])
            end += 1
        chunk = seqs[start:end]
        _, final = capture_hidden_states(model, chunk, [], backend=backend)  # [T, d] final-normed
        greedy = model.compute_logits(final).argmax(-1).cpu()  # [T]
        final = final.float().cpu()
        row = 0
        for ids in chunk:
            n = len(ids)
            h, t = distilled_rows(ids, final[row:row + n], greedy[row:row + n], n_predict)
            hs.append(h)
            ts.append(t)
            row += n
        start = end
    return torch.cat(hs), torch.cat(ts)
