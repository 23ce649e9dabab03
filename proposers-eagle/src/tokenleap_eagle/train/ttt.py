"""EAGLE-3's training-time test: the head unrolled over several draft steps on whole sequences at once.

Step 0: row p takes (embed(x_{p+1}), fc(aux_p)) at position p and attends causally over step 0's keys — the same
as the paged catch-up pass. Step j > 0: row p takes (embed(x_{p+j+1}), the head's step j-1 output of row p) at
position p + j and attends to step 0's keys at positions <= p plus its own chain's keys of steps 1..j (one per
step, "diagonal") — the same as drafting step j from position p at inference. Each step's logits over the draft
vocabulary are scored against the target's distribution at position p + j + 1 (over x_{p+j+2}), restricted to
the draft vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tokenleap_eagle.head import EagleHead


@dataclass
class TTTResult:
    loss: torch.Tensor  # scalar: step-weighted soft cross-entropy
    step_accuracy: list[float]  # per step: argmax(head) == argmax(target) over scored rows
    acceptance_length: float  # 1 + mean over rows of the accepted chain length (all steps scored)
    step_logits: list[torch.Tensor] | None = None  # per step [B, L, draft_vocab] (when keep_logits)


def _attend(q, k0, v0, diag_k, diag_v, scale, causal):
    """q [B, L, Hq, D]; k0, v0 [B, L, Hkv, D]; diag_k / diag_v: lists of [B, L, Hkv, D] -> [B, L, Hq * D]."""
    b, length, hq, d = q.shape
    rep = hq // k0.shape[2]

    def heads(x):  # [B, L, Hkv, D] -> [B, Hq, L, D]
        return x.repeat_interleave(rep, dim=2).transpose(1, 2)

    qh = q.transpose(1, 2).float()  # [B, Hq, L, D]
    s0 = qh @ heads(k0).float().transpose(-1, -2) * scale  # [B, Hq, L, L]
    s0 = s0.masked_fill(~causal, float("-inf"))
    sd = [(qh * heads(kd).float()).sum(-1, keepdim=True) * scale for kd in diag_k]  # each [B, Hq, L, 1]
    p = torch.softmax(torch.cat([s0, *sd], dim=-1), dim=-1)
    out = p[..., :length] @ heads(v0).float()  # [B, Hq, L, D]
    for i, vd in enumerate(diag_v):
        out = out + p[..., length + i:length + i + 1] * heads(vd).float()
    return out.transpose(1, 2).reshape(b, length, hq * d).to(q.dtype)


def ttt_forward(
    head: EagleHead,
    embed: torch.nn.Embedding,  # the target's (frozen)
    target_draft_lm_head: torch.Tensor,  # [draft_vocab, hidden]: the target's LM head rows of the draft ids
    tokens: torch.Tensor,  # [B, L] int64 (padding anywhere the mask is 0)
    aux: torch.Tensor,  # [B, L, 3 * target_hidden]
    final_hidden: torch.Tensor,  # [B, L, hidden]: the target's final-normed hidden states
    loss_mask: torch.Tensor,  # [B, L] bool: position t is an answer token (scored when predicted)
    steps: int,
    step_decay: float = 0.8,
    keep_logits: bool = False,
) -> TTTResult:
    b, length = tokens.shape
    dev = tokens.device
    causal = torch.ones(length, length, dtype=torch.bool, device=dev).tril()
    pos0 = torch.arange(length, device=dev)
    h = head.combine(aux)  # [B, L, H]
    with torch.no_grad():
        target_logp = torch.log_softmax((final_hidden.float() @ target_draft_lm_head.float().T), dim=-1)  # [B, L, dv]
    k0 = v0 = None
    diag_k: list[torch.Tensor] = []
    diag_v: list[torch.Tensor] = []
    total = torch.zeros((), device=dev)
    weight_sum = 0.0
    accs: list[float] = []
    kept: list[torch.Tensor] = []
    chain_ok = torch.ones(b, length, dtype=torch.bool, device=dev)
    accepted = torch.zeros(b, length, device=dev)
    for j in range(steps):
        shift = j + 1
        # row p: token x_{p+j+1}; target distribution at p+j+1; scored if x_{p+j+2} is an answer token
        ids = torch.zeros_like(tokens)
        ids[:, : length - shift] = tokens[:, shift:]
        scored = torch.zeros_like(loss_mask)
        if length > shift + 1:
            scored[:, : length - shift - 1] = loss_mask[:, shift + 1:]
        tgt = torch.zeros_like(target_logp)
        tgt[:, : length - shift] = target_logp[:, shift:]
        emb = embed(ids).to(h.dtype)  # [B, L, H]
        q, k, v, residual = head.project(emb.reshape(b * length, -1), h.reshape(b * length, -1),
                                         (pos0 + j).repeat(b))
        q, k, v = (x.reshape(b, length, *x.shape[1:]) for x in (q, k, v))
        if j == 0:
            k0, v0 = k, v
        else:
            diag_k.append(k)
            diag_v.append(v)
        attn = _attend(q, k0, v0, diag_k, diag_v, head.scale, causal)
        g = head.finish(attn.reshape(b * length, -1), residual)  # [B*L, H]
        logits = head.draft_logits(g).reshape(b, length, -1)  # [B, L, dv]
        if keep_logits:
            kept.append(logits.detach())
        logp = torch.log_softmax(logits, dim=-1)
        ce = -(tgt.exp() * logp).sum(-1)  # [B, L]
        n = scored.sum()
        if n > 0:
            w = step_decay**j
            total = total + w * (ce * scored).sum() / n
            weight_sum += w
            with torch.no_grad():
                ok = logits.argmax(-1) == tgt.argmax(-1)
                accs.append(float((ok & scored).sum() / n))
                if j == 0:
                    first = scored
                chain_ok = chain_ok & ok & scored
                accepted = accepted + chain_ok.float()
        h = g.reshape(b, length, -1)
    loss = total / max(weight_sum, 1e-9)
    kept_or_none = kept if keep_logits else None
    if not accs:
        return TTTResult(loss, accs, 1.0, kept_or_none)
    return TTTResult(loss, accs, 1.0 + float((accepted * first).sum()) / max(int(first.sum()), 1), kept_or_none)
