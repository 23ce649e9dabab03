"""Training an MLP speculator on the target's own outputs.

Data: the target answers chat prompts (ShareGPT first turns by default; never MT-Bench, the evaluation set)
with greedy decoding; each prompt + answer is run through the target once more to read its final-normed hidden
states. Training: teacher-forced stages (``MLPSpeculator.forward_teacher_forced``), cross-entropy against the
target's own next tokens on the answer positions, AdamW. The vocabulary matrices start from a low-rank
projection of the target's embedding (its top ``inner_dim`` principal directions), so a small speculator
learns fast on CPU.

    python -m tokenleap_eagle.train.mlp_speculator --target smollm2-135m-instruct --out DIR
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

from tokenleap_eagle.mlp_speculator.loader import save_speculator
from tokenleap_eagle.mlp_speculator.model import MLPSpeculator, MLPSpeculatorConfig


@dataclass
class Sequence_:
    token_ids: list[int]  # prompt + answer
    num_prompt_tokens: int
    hidden: torch.Tensor  # [len(token_ids), hidden] float32: the target's final-normed hidden states


def generate_answers(target: str, prompts: Sequence[str], max_tokens: int, seed: int = 0) -> list[tuple[list[int], int]]:
    """(prompt + greedy answer token ids, prompt length) per prompt, from tokenleap's own engine."""
    from tokenleap import LLM, SamplingParams

    llm = LLM(model=target, seed=seed)
    tok = llm.get_tokenizer()
    batch = []
    for t in prompts:
        ids = tok.apply_chat_template([{"role": "user", "content": t}], tokenize=True, add_generation_prompt=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        batch.append({"prompt_token_ids": list(ids)[-512:]})
    outs = llm.generate(batch, SamplingParams(temperature=0.0, max_tokens=max_tokens), use_tqdm=False)
    return [(list(b["prompt_token_ids"]) + list(o.outputs[0].token_ids), len(b["prompt_token_ids"]))
            for b, o in zip(batch, outs)]


@torch.no_grad()
def target_hidden_states(target: str, seqs: Sequence[list[int]]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The target's final-normed hidden states of each sequence ([len, hidden] float32), and its embedding."""
    from tokenleap.kernels.ops import layer_ops
    from tokenleap.model.attention import AttentionMetadata
    from tokenleap.model.hub import resolve_model
    from tokenleap.model.llama import LlamaForCausalLM
    from tokenleap.model.loader import load_checkpoint

    ckpt = load_checkpoint(str(resolve_model(target, progress=False)), dtype="float32")
    arch, bs = ckpt.arch, 16
    longest = max(len(s) for s in seqs)
    model = LlamaForCausalLM(arch, longest + 64, layer_ops("torch"))
    model.load_hf_weights(ckpt.weights)
    model.eval()
    blocks = -(-longest // bs) + 1
    shape = (blocks, bs, arch.num_key_value_heads, arch.head_dim)
    caches = [(torch.zeros(shape), torch.zeros(shape)) for _ in range(arch.num_hidden_layers)]
    out = []
    for s in seqs:
        n = len(s)
        meta = AttentionMetadata(
            slot_mapping=torch.arange(bs, bs + n), block_tables=torch.arange(1, blocks, dtype=torch.int32)[None],
            query_start_loc=torch.tensor([0, n], dtype=torch.int32), seq_lens=torch.tensor([n], dtype=torch.int32),
            query_lens_host=[n], seq_lens_host=[n], max_query_len=n, max_seq_len=longest + 64,
        )
        hidden, _ = model(torch.tensor(s), torch.arange(n), caches, meta)  # [n, hidden], final-normed
        out.append(hidden.float())
    return out, model.embed_tokens.weight.detach().float()


def init_from_embedding(model: MLPSpeculator, embedding: torch.Tensor) -> None:
    """emb / head := the target's embedding projected on its top ``inner_dim`` principal directions."""
    inner = model.cfg.inner_dim
    _, _, v = torch.linalg.svd(embedding - embedding.mean(0), full_matrices=False)  # v: [hidden, hidden]
    basis = v[:inner].T  # [hidden, inner]
    low = embedding @ basis  # [vocab, inner]
    low = low / low.norm(dim=-1).mean()  # unit-ish rows
    with torch.no_grad():
        for m in {id(e): e for e in model.emb}.values():
            m.weight.copy_(low * math.sqrt(inner) / 4)
        for m in {id(h): h for h in model.head}.values():
            m.weight.copy_(low * math.sqrt(inner) / 4)
        model.proj[0].weight.copy_(basis.T * math.sqrt(inner))  # [inner, hidden]


def train_mlp_speculator(
    data: Sequence[Sequence_],
    cfg: MLPSpeculatorConfig,
    *,
    embedding: torch.Tensor | None = None,
    steps: int = 300,
    batch_rows: int = 2048,
    lr: float = 3e-3,
    seed: int = 0,
    log_every: int = 50,
) -> MLPSpeculator:
    """Teacher-forced training on (hidden state, tokens) rows: row ``j`` of a sequence (an answer position, or
    the last prompt position) and the tokens after it. Returns the trained speculator (float32, CPU)."""
    torch.manual_seed(seed)
    model = MLPSpeculator(cfg)
    if embedding is not None and embedding.shape[0] == cfg.vocab_size:
        init_from_embedding(model, embedding)
    n = cfg.n_predict
    # Rows: (hidden at j, token j+1 = what it predicted, tokens j+2 .. j+1+n = the stages' targets, -1 past the end)
    hs, toks = [], []
    for s in data:
        ids = torch.tensor(s.token_ids + [-1] * (n + 1))
        first = max(s.num_prompt_tokens - 1, 0)
        js = torch.arange(first, len(s.token_ids) - 1)
        hs.append(s.hidden[js])
        toks.append(torch.stack([ids[js + 1 + i] for i in range(n + 1)], dim=1))  # [rows, n + 1]
    hidden, tokens = torch.cat(hs), torch.cat(toks)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    start = time.time()
    for step in range(steps):
        idx = torch.randint(0, hidden.shape[0], (batch_rows,))
        h, t = hidden[idx], tokens[idx]  # [b, hidden], [b, n + 1]
        state = model.input_state(h)
        loss, accs = 0.0, []
        for i in range(n):
            valid = t[:, i + 1] >= 0
            state = model.stage(i, state, t[:, i].clamp(min=0))
            logits = model.logits(i, state)
            loss = loss + F.cross_entropy(logits[valid], t[valid, i + 1]) * (0.8**i)
            accs.append((logits[valid].argmax(-1) == t[valid, i + 1]).float().mean().item())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"step {step} loss {loss.item():.3f} acc/stage {[round(a, 3) for a in accs]} "
                  f"{time.time() - start:.0f}s", flush=True)
    return model.eval()


def build_data(target: str, num_prompts: int, max_tokens: int, dataset: str = "sharegpt") -> tuple[list[Sequence_], torch.Tensor]:
    from tokenleap.bench.prompts import load_prompts

    prompts = load_prompts(dataset, num_prompts)
    t0 = time.time()
    seqs = generate_answers(target, prompts, max_tokens)
    print(f"generated {sum(len(s) - p for s, p in seqs)} answer tokens for {len(seqs)} prompts "
          f"in {time.time() - t0:.0f}s", flush=True)
    t0 = time.time()
    hidden, embedding = target_hidden_states(target, [s for s, _ in seqs])
    print(f"hidden states of {sum(len(s) for s, _ in seqs)} tokens in {time.time() - t0:.0f}s", flush=True)
    return [Sequence_(s, p, h) for (s, p), h in zip(seqs, hidden)], embedding


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tokenleap_eagle.train.mlp_speculator",
                                 description="train an MLP speculator on the target's own greedy answers")
    ap.add_argument("--target", default="smollm2-135m-instruct", help="the target model (path or alias)")
    ap.add_argument("--out", required=True, help="folder to write config.json + model.safetensors to")
    ap.add_argument("--dataset", default="sharegpt", help="prompt set (tokenleap.bench.prompts)")
    ap.add_argument("--num-prompts", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=128, help="answer length per prompt")
    ap.add_argument("--n-predict", type=int, default=3)
    ap.add_argument("--inner-dim", type=int, default=128)
    ap.add_argument("--tie-weights", action="store_true", help="share one embedding, head and LN across stages")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-rows", type=int, default=2048)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--data-cache", default=None, help="a .pt file to keep / reuse the generated data in")
    a = ap.parse_args(argv)
    if a.data_cache and Path(a.data_cache).is_file():
        blob = torch.load(a.data_cache)
        data = [Sequence_(**d) for d in blob["data"]]
        embedding = blob["embedding"]
    else:
        data, embedding = build_data(a.target, a.num_prompts, a.max_tokens, a.dataset)
        if a.data_cache:
            torch.save({"data": [vars(d) for d in data], "embedding": embedding}, a.data_cache)
    cfg = MLPSpeculatorConfig(emb_dim=data[0].hidden.shape[1], inner_dim=a.inner_dim, vocab_size=embedding.shape[0],
                              n_predict=a.n_predict, tie_weights=a.tie_weights, scale_input=False)
    model = train_mlp_speculator(data, cfg, embedding=embedding, steps=a.steps, batch_rows=a.batch_rows, lr=a.lr)
    out = Path(a.out)
    save_speculator(model, out)
    (out / "training.json").write_text(json.dumps({**vars(a), "rows": sum(len(d.token_ids) for d in data)}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
