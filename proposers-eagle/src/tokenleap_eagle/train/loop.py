"""``tokenleap-eagle train``: generate the target's answers, then train an EAGLE-3 head on them (resumable).

Output folder:
    sequences.json   prompt + answer token ids (generation is skipped when it exists)
    checkpoint.pt    head + optimizer state every --checkpoint-every steps (read back with weights_only=True)
    config.json, model.safetensors   the head in the EAGLE-3 layout (bf16), written at the end
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from tokenleap_eagle.train.data import (
    SHAREGPT_TURNS,
    TrainSequence,
    capture_hidden_states,
    generate_sequences,
    prompts_from_file,
    sharegpt_prompts,
)
from tokenleap_eagle.train.export import head_config_for, init_head, save_eagle3
from tokenleap_eagle.train.ttt import ttt_forward
from tokenleap_eagle.train.vocab import draft_vocabulary


@dataclass
class TrainArgs:
    target: str
    out: str
    device: str = "auto"  # auto | cpu | cuda
    num_prompts: int = 2000
    prompts: str | None = None  # a JSON file of prompt strings; default: ShareGPT turns
    sharegpt_turns: str = "first"  # first | all: which ShareGPT human turns are prompts
    max_tokens: int = 256  # answer length per prompt
    max_prompt_tokens: int = 384
    gen_batch_size: int = 128  # requests the engine decodes at once while generating the answers
    gen_waves: bool = False  # generate in waves of gen_batch_size prompts (see data.generate_sequences)
    draft_vocab_size: int = 8192
    aux_layers: tuple[int, ...] | None = None  # default (2, N // 2, N - 3)
    ttt_steps: int = 5
    epochs: int = 3
    batch_size: int = 16  # sequences per optimizer step
    lr: float = 1e-3
    warmup: float = 0.05
    seed: int = 0
    checkpoint_every: int = 200
    resume: bool = False
    progress: bool = True
    feature_cache_gb: float = 8.0  # keep captured hidden states of up to this size instead of recomputing
    max_train_minutes: float | None = None  # stop training (and write the head) after this long

    def validate(self) -> None:
        if self.sharegpt_turns not in SHAREGPT_TURNS:
            raise ValueError(f"--sharegpt-turns={self.sharegpt_turns!r}: allowed {', '.join(SHAREGPT_TURNS)}")
        for name in ("num_prompts", "max_tokens", "gen_batch_size", "draft_vocab_size", "ttt_steps", "epochs",
                     "batch_size", "checkpoint_every", "max_prompt_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')}={getattr(self, name)}: must be >= 1")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"--device={self.device!r}: allowed auto, cpu, cuda")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device=cuda but torch sees no CUDA device")
        if self.max_train_minutes is not None and self.max_train_minutes <= 0:
            raise ValueError(f"--max-train-minutes={self.max_train_minutes}: must be > 0")
        if not 0 < self.lr < 1:
            raise ValueError(f"--lr={self.lr}: must be in (0, 1)")
        if self.prompts is not None and not Path(self.prompts).is_file():
            raise ValueError(f"--prompts={self.prompts!r}: no such file")
        if self.aux_layers is not None and len(self.aux_layers) != 3:
            raise ValueError(f"--aux-layers={list(self.aux_layers)}: three layer indices are needed")


def _lr_at(step: int, total: int, args: TrainArgs) -> float:
    warm = max(1, int(total * args.warmup))
    if step < warm:
        return args.lr * (step + 1) / warm
    frac = (step - warm) / max(1, total - warm)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def _batches(seqs: list[TrainSequence], batch_size: int) -> list[list[int]]:
    """Fixed batches of similar lengths (less padding)."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i].token_ids))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def _save_sequences(path: Path, seqs: list[TrainSequence]) -> None:
    path.write_text(json.dumps([{"token_ids": list(s.token_ids), "num_prompt_tokens": s.num_prompt_tokens}
                                for s in seqs]))


def _load_sequences(path: Path) -> list[TrainSequence]:
    return [TrainSequence(tuple(d["token_ids"]), int(d["num_prompt_tokens"])) for d in json.loads(path.read_text())]


def _evaluation_prompts() -> list[str]:
    """MT-Bench first turns (what acceptance is measured on), when their file is cached: never trained on."""
    from tokenleap.bench.prompts import WHEEL_DATASETS, load_mtbench
    from tokenleap.model.hub import cache_dir

    path = cache_dir() / "datasets" / "mtbench" / WHEEL_DATASETS["mtbench"].filename
    return load_mtbench(path=path) if path.is_file() else []


def train(args: TrainArgs) -> Path:
    """Run the whole pipeline; returns the output folder."""
    from tokenleap import LLM
    from tqdm.auto import tqdm

    args.validate()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else (
        "cpu" if args.device == "auto" else args.device)
    torch.manual_seed(args.seed)
    # On a GPU the engine keeps part of the memory: the feature cache and the training step need the rest.
    llm = LLM(model=args.target, device=device, seed=args.seed, max_num_seqs=args.gen_batch_size,
              max_model_len=args.max_prompt_tokens + args.max_tokens + 8,
              gpu_memory_utilization=0.15 if device == "cuda" else 0.9)
    model = llm.engine.model
    arch = llm.engine.arch
    backend = llm.engine.backend
    seq_path = out / "sequences.json"
    t0 = time.perf_counter()
    if seq_path.is_file() and args.resume:
        seqs = _load_sequences(seq_path)
    else:
        if args.prompts:
            excluded = {e.strip() for e in _evaluation_prompts()}
            prompts = [p for p in prompts_from_file(args.prompts, args.num_prompts) if p.strip() not in excluded]
        else:
            prompts = sharegpt_prompts(args.num_prompts, seed=args.seed, exclude=_evaluation_prompts(),
                                       turns=args.sharegpt_turns)
        seqs = generate_sequences(llm, prompts, args.max_tokens, args.max_prompt_tokens, seed=args.seed,
                                  wave_size=args.gen_batch_size if args.gen_waves else None,
                                  progress=args.progress)
        _save_sequences(seq_path, seqs)
    gen_s = time.perf_counter() - t0
    if not seqs:
        raise RuntimeError("the target produced no answers to train on")
    n = arch.num_hidden_layers
    aux_layers = tuple(args.aux_layers) if args.aux_layers else (2, n // 2, n - 3)
    answer_tokens = [t for s in seqs for t in s.token_ids[s.num_prompt_tokens:]]
    draft_ids = draft_vocabulary(answer_tokens, args.draft_vocab_size, arch.vocab_size)
    in_vocab = torch.isin(torch.tensor(answer_tokens), draft_ids).float().mean().item()
    _say(args, f"{len(seqs)} answers, {len(answer_tokens)} answer tokens in {gen_s:.0f} s; the draft vocabulary "
               f"({len(draft_ids)} ids) covers {in_vocab:.1%} of them")
    from tokenleap_eagle.head import EagleHead

    cfg = head_config_for(arch, len(draft_ids), aux_layers)
    head = EagleHead(cfg)
    init_head(head, model, draft_ids, args.seed)
    head = head.to(device).float().train()
    embed = model.embed_tokens
    lm = model.embed_tokens.weight if model.lm_head is None else model.lm_head.weight
    target_rows = lm[draft_ids.to(lm.device)].detach()  # [dv, H]
    opt = torch.optim.AdamW(head.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    batches = _batches(seqs, args.batch_size)
    total = len(batches) * args.epochs
    step = 0
    ckpt_path = out / "checkpoint.pt"
    if args.resume and ckpt_path.is_file():
        state = torch.load(str(ckpt_path), map_location=device, weights_only=True)
        head.load_state_dict(state["head"])
        opt.load_state_dict(state["optimizer"])
        step = int(state["step"])
    cache: dict[int, tuple] = {}
    cache_bytes = 0
    acc_ema, loss_ema = None, None
    bar = tqdm(total=total, initial=step, disable=not args.progress, desc="train eagle3")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast(
        "cpu", enabled=False)
    train_t0 = time.perf_counter()
    stopped_early = False
    while step < total:
        if args.max_train_minutes is not None and time.perf_counter() - train_t0 > 60 * args.max_train_minutes:
            stopped_early = True
            _say(args, f"--max-train-minutes={args.max_train_minutes} reached at step {step} of {total}")
            break
        epoch, idx = divmod(step, len(batches))
        order = list(range(len(batches)))
        random.Random(args.seed + epoch).shuffle(order)
        b = order[idx]
        feats = cache.get(b)
        if feats is None:
            feats = _features(model, [seqs[i] for i in batches[b]], aux_layers, backend, device)
            size = sum(t.numel() * t.element_size() for t in feats)
            if cache_bytes + size <= args.feature_cache_gb * 2**30:
                cache[b] = feats
                cache_bytes += size
        tokens, aux, final, mask = feats
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, total, args)
        with autocast:
            res = ttt_forward(head, embed, target_rows, tokens, aux, final, mask, args.ttt_steps)
        opt.zero_grad(set_to_none=True)
        res.loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        opt.step()
        step += 1
        loss = float(res.loss.detach())
        loss_ema = loss if loss_ema is None else 0.95 * loss_ema + 0.05 * loss
        acc_ema = res.acceptance_length if acc_ema is None else 0.95 * acc_ema + 0.05 * res.acceptance_length
        bar.update(1)
        bar.set_postfix(loss=f"{loss_ema:.3f}", accept_len=f"{acc_ema:.2f}")
        if step % args.checkpoint_every == 0 or step == total:
            tmp = out / "checkpoint.pt.tmp"
            torch.save({"head": head.state_dict(), "optimizer": opt.state_dict(), "step": step}, str(tmp))
            tmp.replace(ckpt_path)
    bar.close()
    _say(args, f"trained {step} steps in {time.perf_counter() - train_t0:.0f} s: loss {loss_ema:.3f}, "
               f"acceptance length (training batches) {acc_ema:.2f}")
    info = {"target": args.target, "args": {k: (list(v) if isinstance(v, tuple) else v)
                                            for k, v in asdict(args).items()},
            "sequences": len(seqs), "answer_tokens": len(answer_tokens), "generation_seconds": round(gen_s, 1),
            "train_seconds": round(time.perf_counter() - t0 - gen_s, 1), "steps": total,
            "final_loss_ema": loss_ema, "final_acceptance_length_ema": acc_ema, "draft_vocab_coverage": in_vocab,
            "stopped_early_at_step": step if stopped_early else None}
    save_eagle3(head, out, extra=info)
    return out


def _say(args: TrainArgs, text: str) -> None:
    print(f"[tokenleap-eagle train] {text}", flush=True)


@torch.no_grad()
def _features(model, seqs: list[TrainSequence], layers: tuple[int, ...], backend: str, device: str):
    """(tokens [B, L], aux [B, L, 3H], final [B, L, H] (model dtype), answer mask [B, L]) for one batch."""
    aux, final = capture_hidden_states(model, [s.token_ids for s in seqs], layers, backend=backend)
    length = max(len(s.token_ids) for s in seqs)
    b, hidden = len(seqs), final.shape[-1]
    tokens = torch.zeros(b, length, dtype=torch.int64, device=device)
    aux_out = torch.zeros(b, length, 3 * hidden, dtype=final.dtype, device=device)
    final_out = torch.zeros(b, length, hidden, dtype=final.dtype, device=device)
    mask = torch.zeros(b, length, dtype=torch.bool, device=device)
    row = 0
    cat = torch.cat([aux[i] for i in layers], dim=-1)
    for i, s in enumerate(seqs):
        n = len(s.token_ids)
        tokens[i, :n] = torch.tensor(s.token_ids, device=device)
        aux_out[i, :n] = cat[row:row + n]
        final_out[i, :n] = final[row:row + n]
        mask[i, s.num_prompt_tokens:n] = True
        row += n
    return tokens, aux_out, final_out, mask
