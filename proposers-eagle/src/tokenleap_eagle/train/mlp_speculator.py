"""Training an MLP speculator on the target's own greedy predictions.

Data (``mlp_data``): the target reads ShareGPT first exchanges (never MT-Bench, the evaluation set) once, and
every label is the token it would itself generate greedily there (or sequences it generated, which agree
everywhere). Training: teacher-forced stages, cross-entropy (a sampled softmax over the batch's labels and random
vocabulary entries) against those labels, AdamW. The vocabulary matrices start from a low-rank projection of the
target's embedding (its top ``inner_dim`` principal directions), so a small speculator learns fast on CPU.

    python -m tokenleap_eagle.train.mlp_speculator --target smollm2-135m-instruct --out DIR
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.nn import functional as F

from tokenleap_eagle.mlp_speculator.loader import save_speculator
from tokenleap_eagle.mlp_speculator.model import MLPSpeculator, MLPSpeculatorConfig
from tokenleap_eagle.train.mlp_data import load_target, rows_from_sequences, sharegpt_sequences


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
    hidden: torch.Tensor,
    tokens: torch.Tensor,
    cfg: MLPSpeculatorConfig,
    *,
    embedding: torch.Tensor | None = None,
    steps: int = 300,
    batch_rows: int = 1024,
    lr: float = 3e-3,
    num_negatives: int = 2048,
    weight_decay: float = 0.0,
    input_noise: float = 0.0,
    val_fraction: float = 0.0,
    seed: int = 0,
    log_every: int = 50,
    device: str | torch.device = "cpu",
) -> MLPSpeculator:
    """Teacher-forced training on rows (``mlp_data.distilled_rows``): hidden [r, emb_dim] final-normed target
    states, tokens [r, n_predict + 1] (column 0 the token fed with the state, column i + 1 stage i's label, -1 when
    unlabelled). The softmax of each step runs over the batch's labels plus ``num_negatives`` random vocabulary
    entries (all of them for a small vocabulary): a sampled softmax, so a 49k-entry head trains on a CPU.
    ``input_noise``: Gaussian noise (times the rows' RMS) on the hidden states while training, against memorising
    rows. ``val_fraction``: the last rows (other conversations) are held out; every ``log_every`` steps the stage-0
    accuracy over the full vocabulary is measured on them and the best state is kept.
    ``device``: where the rows and the speculator live while training.
    Returns the trained speculator (float32, CPU)."""
    if hidden.shape[0] == 0:
        raise ValueError("no training rows: the target's greedy predictions never agreed with the data's text")
    torch.manual_seed(seed)
    model = MLPSpeculator(cfg)
    if embedding is not None and embedding.shape[0] == cfg.vocab_size:
        init_from_embedding(model, embedding.float().cpu())
    device = torch.device(device)
    model = model.to(device)
    hidden, tokens = hidden.to(device), tokens.to(device)
    n, vocab = cfg.n_predict, cfg.vocab_size
    n_val = int(len(tokens) * val_fraction)
    val_h, val_t = hidden[len(tokens) - n_val:], tokens[len(tokens) - n_val:]
    hidden, tokens = hidden[: len(tokens) - n_val], tokens[: len(tokens) - n_val]
    best = (-1.0, None)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    start = time.time()
    for step in range(steps):
        idx = torch.randint(0, hidden.shape[0], (batch_rows,), device=device)
        h, t = hidden[idx], tokens[idx]  # [b, emb_dim], [b, n + 1]
        if num_negatives >= vocab:
            cand = torch.arange(vocab, device=device)
        else:
            cand = torch.unique(torch.cat([t[:, 1:][t[:, 1:] >= 0],
                                           torch.randint(0, vocab, (num_negatives,), device=device)]))
        where = torch.full((vocab,), -1, dtype=torch.int64, device=device)
        where[cand] = torch.arange(len(cand), device=device)
        if input_noise:
            h = h + torch.randn_like(h) * input_noise * h.pow(2).mean(-1, keepdim=True).sqrt()
        state = model.input_state(h)
        loss, accs = 0.0, []
        for i in range(n):
            valid = t[:, i + 1] >= 0
            if not valid.any():
                break
            state = model.stage(i, state, t[:, i].clamp(min=0))
            logits = state[valid] @ model.head[i].weight[cand].T  # [v, candidates]
            label = where[t[valid, i + 1]]
            loss = loss + F.cross_entropy(logits.float(), label) * (0.7**i)
            accs.append((logits.argmax(-1) == label).float().mean().item())
            # the next stage is fed this stage's label (teacher forcing); unlabelled rows drop out there
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if log_every and (step % log_every == 0 or step == steps - 1):
            val = _stage0_accuracy(model, val_h, val_t) if n_val else float("nan")
            if n_val and val > best[0]:
                best = (val, {k: v.detach().clone() for k, v in model.state_dict().items()})
            print(f"step {step} loss {loss.item():.3f} acc/stage (sampled softmax) {[round(a, 3) for a in accs]} "
                  f"held-out stage-0 acc {val:.3f} {time.time() - start:.0f}s", flush=True)
    if best[1] is not None:
        model.load_state_dict(best[1])
        print(f"kept the state of held-out stage-0 accuracy {best[0]:.3f}")
    return model.cpu().eval()


@torch.no_grad()
def _stage0_accuracy(model: MLPSpeculator, hidden: torch.Tensor, tokens: torch.Tensor, chunk: int = 4096) -> float:
    """Stage 0's argmax over the full vocabulary against its labels (``chunk`` rows at a time)."""
    right = 0
    for s in range(0, len(tokens), chunk):
        h, t = hidden[s:s + chunk], tokens[s:s + chunk]
        state = model.stage(0, model.input_state(h), t[:, 0])
        right += int((model.logits(0, state).argmax(-1) == t[:, 1]).sum())
    return right / max(len(tokens), 1)


def _rows_of_generated_sequences(target: str, path: str, n_predict: int, device: str):
    """(hidden, tokens, embedding) from a sequences.json of the target's own answers, read by tokenleap's engine."""
    from tokenleap import LLM

    from tokenleap_eagle.train.mlp_data import rows_from_engine

    seqs = [list(d["token_ids"]) for d in json.loads(Path(path).read_text())]
    llm = LLM(model=target, device=device, max_model_len=max(len(s) for s in seqs) + 8,
              gpu_memory_utilization=0.3 if device == "cuda" else 0.9)
    model = llm.engine.model
    hidden, tokens = rows_from_engine(model, seqs, n_predict, backend=llm.engine.backend)
    embedding = model.embed_tokens.weight.detach().float().cpu()
    del llm
    return hidden, tokens, embedding


def main(argv: Sequence[str] | None = None, prog: str = "python -m tokenleap_eagle.train.mlp_speculator") -> int:
    ap = argparse.ArgumentParser(prog=prog,
                                 description="train an MLP speculator on the target's own greedy answers")
    ap.add_argument("--target", default="smollm2-135m-instruct", help="the target model (path or alias)")
    ap.add_argument("--out", required=True, help="folder to write config.json + model.safetensors to")
    ap.add_argument("--num-conversations", type=int, default=48, help="ShareGPT first exchanges the target reads")
    ap.add_argument("--max-len", type=int, default=320, help="tokens kept per conversation")
    ap.add_argument("--n-predict", type=int, default=3)
    ap.add_argument("--inner-dim", type=int, default=128)
    ap.add_argument("--tie-weights", action="store_true", help="share one embedding, head and LN across stages")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-rows", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--input-noise", type=float, default=0.0)
    ap.add_argument("--val-fraction", type=float, default=0.0)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--data-cache", default=None, help="a .pt file to keep / reuse the generated data in")
    ap.add_argument("--sequences", default=None,
                    help="the target's own answers to learn from: the sequences.json `tokenleap-eagle train` writes "
                         "(read by tokenleap's engine on --device); default: ShareGPT exchanges read by transformers")
    ap.add_argument("--num-negatives", type=int, default=2048,
                    help="random vocabulary entries in each step's sampled softmax (>= vocab size: the full softmax)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    a = ap.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device=cuda but torch sees no CUDA device")
    if a.sequences and not Path(a.sequences).is_file():
        ap.error(f"--sequences={a.sequences!r}: no such file")
    if a.data_cache and Path(a.data_cache).is_file():
        blob = torch.load(a.data_cache)
        hidden, tokens, embedding = blob["hidden"], blob["tokens"], blob["embedding"]
    elif a.sequences:
        hidden, tokens, embedding = _rows_of_generated_sequences(a.target, a.sequences, a.n_predict, a.device)
        if a.data_cache:
            torch.save({"hidden": hidden, "tokens": tokens, "embedding": embedding}, a.data_cache)
    else:
        model, head, tokenizer = load_target(a.target)
        seqs = sharegpt_sequences(tokenizer, a.num_conversations, a.max_len)
        hidden, tokens = rows_from_sequences(model, head, seqs, a.n_predict)
        embedding = model.get_input_embeddings().weight.detach().clone()
        if a.data_cache:
            torch.save({"hidden": hidden, "tokens": tokens, "embedding": embedding}, a.data_cache)
    labelled = [(tokens[:, i] >= 0).sum().item() for i in range(1, a.n_predict + 1)]
    print(f"{len(tokens)} rows; labelled per stage: {labelled}", flush=True)
    cfg = MLPSpeculatorConfig(emb_dim=hidden.shape[1], inner_dim=a.inner_dim, vocab_size=embedding.shape[0],
                              n_predict=a.n_predict, tie_weights=a.tie_weights, scale_input=False)
    model = train_mlp_speculator(hidden, tokens, cfg, embedding=embedding, steps=a.steps, batch_rows=a.batch_rows,
                                 lr=a.lr, weight_decay=a.weight_decay, input_noise=a.input_noise,
                                 val_fraction=a.val_fraction, log_every=a.log_every,
                                 num_negatives=a.num_negatives, device=a.device)
    out = Path(a.out)
    save_speculator(model, out)
    (out / "training.json").write_text(json.dumps({**vars(a), "rows": len(tokens)}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
