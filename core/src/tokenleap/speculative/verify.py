"""Verification of draft tokens: speculative (rejection) sampling, lossless by construction.

Definitions (per request, with n draft tokens x_1..x_n):
- target distribution p_i: the target's processed distribution at the position of x_i (i = 1..n) and
  at the position after x_n (i = n + 1);
- draft distribution q_i: the proposer's distribution x_i was sampled from, or one-hot at x_i when the
  proposer gives none (deterministic drafters such as n-gram lookup);
- accepted tokens: x_i is accepted with probability min(1, p_i(x_i) / q_i(x_i)), in order, stopping at
  the first rejection;
- recovered token: at the first rejected position i, a token drawn from normalize(max(p_i - q_i, 0));
- bonus token: when all n drafts are accepted, a token drawn from p_{n+1}.
Each step emits accepted + 1 tokens. The emitted sequence is distributed exactly as sampling from the
target one token at a time (Leviathan et al. 2023; Chen et al. 2023). Greedy decoding is the case where
every p_i is one-hot at the argmax: accept while x_i equals the argmax, then emit the argmax.

``verify_reference`` is the readable definition; ``rejection_sample`` is the batched fast path and must
give the same tokens for the same random numbers (tests check it).

Coupled verification (``verify_coupled_reference`` / ``verify_coupled``): the target draws its own token at
every verified position with the noise plain sampling would use there (the exponential race keyed by seed,
completion and output position); a draft is accepted iff it equals that token, and the target's token is
emitted at the first mismatch. The emitted tokens are then exactly the tokens plain sampling gives, whatever
the drafts: a seeded request's output does not depend on the proposer, k or the batch. For a one-hot draft x
the acceptance probability is p(x), the same as rejection sampling's min(1, p(x) / 1); for drafts drawn from
q it is P(argmax p/E = argmax q/E) when the drafter draws with the same noise (``noise.sample_with_noise``),
below rejection sampling's sum min(p, q) but drafter-invariant (Daliri et al. 2024).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def verify_reference(
    p: torch.Tensor,  # [n + 1, vocab] target distributions
    draft_ids: list[int],  # [n]
    q: torch.Tensor | None,  # [n, vocab] draft distributions, None = one-hot drafts
    uniforms: torch.Tensor,  # [n] in (0, 1): the acceptance test of each draft
    draw: Callable[[torch.Tensor, int], int],  # draw(distribution [vocab], position) -> token id
) -> list[int]:
    """One request's verification, written for reading. Returns the emitted tokens."""
    emitted: list[int] = []
    for i, x in enumerate(draft_ids):
        q_i = q[i] if q is not None else torch.nn.functional.one_hot(torch.tensor(x), p.shape[-1]).to(p)
        if uniforms[i] * q_i[x] <= p[i, x]:  # accept with probability min(1, p(x) / q(x))
            emitted.append(x)
            continue
        residual = torch.clamp(p[i] - q_i, min=0)
        emitted.append(draw(residual / residual.sum(), i))  # recovered token
        return emitted
    emitted.append(draw(p[len(draft_ids)], len(draft_ids)))  # bonus token
    return emitted


def is_coupled(draft_verification: str, has_draft_probs: bool, seeded: bool) -> bool:
    """Whether a request's drafts are verified by coupling (speculative_config.draft_verification)."""
    return not has_draft_probs or draft_verification == "coupled" or (draft_verification == "auto" and seeded)


def verify_coupled_reference(
    p: torch.Tensor,  # [n + 1, vocab] target distributions
    draft_ids: list[int],  # [n]
    draw: Callable[[torch.Tensor, int], int],  # draw(distribution [vocab], position) -> token id (plain noise)
) -> list[int]:
    """One request's coupled verification, written for reading. Returns the emitted tokens."""
    emitted: list[int] = []
    for i, x in enumerate(draft_ids):
        token = draw(p[i], i)  # what plain sampling draws at this position
        emitted.append(token)
        if token != x:
            return emitted  # first mismatch: the target's token, then stop
    emitted.append(draw(p[len(draft_ids)], len(draft_ids)))  # bonus token
    return emitted


def greedy_emitted(targets: list[int], drafts: list[int]) -> list[int]:
    """Greedy verification of one request on the host: ``targets`` [len(drafts) + 1] are the target's tokens at
    the verified positions (argmax, under constraints where the request has them); the emitted tokens are those
    up to and including the first that differs from its draft (``verify_greedy``'s rule)."""
    for i, x in enumerate(drafts):
        if targets[i] != x:
            return targets[: i + 1]
    return targets[: len(drafts) + 1]


def verify_coupled(
    target_tokens: torch.Tensor,  # [batch, k + 1] the target's own draw at each verified position
    draft_ids: torch.Tensor,  # [batch, k] (padding: any id)
    num_drafts: torch.Tensor,  # [batch] 0..k
) -> tuple[torch.Tensor, torch.Tensor]:  # tokens [batch, k + 1], num_emitted [batch]
    """Batched coupled verification: accept while draft == the target's token (greedy is the case where
    the target's token is the argmax)."""
    return verify_greedy(target_tokens, draft_ids, num_drafts)


def verify_greedy(
    target_argmax: torch.Tensor,  # [batch, k + 1] argmax of the target at each verified position
    draft_ids: torch.Tensor,  # [batch, k] (padding: any id)
    num_drafts: torch.Tensor,  # [batch] 0..k
) -> tuple[torch.Tensor, torch.Tensor]:  # tokens [batch, k + 1], num_emitted [batch]
    """Greedy fast path: accept while draft == argmax; the emitted tokens are the argmaxes."""
    k = draft_ids.shape[1]
    valid = torch.arange(k, device=draft_ids.device)[None, :] < num_drafts[:, None]  # [batch, k]
    match = (draft_ids == target_argmax[:, :k]) & valid
    num_accepted = torch.cumprod(match.to(torch.int64), dim=1).sum(dim=1)  # [batch]
    return target_argmax, num_accepted + 1


def rejection_sample(
    p: torch.Tensor,  # [batch, k + 1, vocab] target distributions (greedy rows one-hot)
    draft_ids: torch.Tensor,  # [batch, k] int64 (padding: any valid id)
    num_drafts: torch.Tensor,  # [batch] int64, 0..k
    q: torch.Tensor | None,  # [batch, k, vocab] draft distributions; None = one-hot drafts
    uniforms: torch.Tensor,  # [batch, k] in (0, 1)
    draw: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],  # (dist [batch, vocab], pos [batch]) -> ids
) -> tuple[torch.Tensor, torch.Tensor]:  # tokens [batch, k + 1], num_emitted [batch]
    """Batched speculative sampling, the same rule as ``verify_reference``; no host sync."""
    batch, k = draft_ids.shape
    rows = torch.arange(batch, device=p.device)
    if k > 0:
        p_x = p[:, :k].gather(-1, draft_ids[..., None]).squeeze(-1)  # [batch, k]
        q_x = q.gather(-1, draft_ids[..., None]).squeeze(-1) if q is not None else torch.ones_like(p_x)
        valid = torch.arange(k, device=p.device)[None, :] < num_drafts[:, None]
        accept = (uniforms * q_x <= p_x) & valid
        num_accepted = torch.cumprod(accept.to(torch.int64), dim=1).sum(dim=1)  # [batch]
    else:
        num_accepted = torch.zeros(batch, dtype=torch.int64, device=p.device)
    p_at = p[rows, num_accepted]  # [batch, vocab] target distribution at the first unaccepted position
    rejected = num_accepted < num_drafts  # [batch]
    if k > 0:
        at = num_accepted.clamp(max=k - 1)
        if q is not None:
            q_at = q[rows, at]
        else:
            q_at = torch.nn.functional.one_hot(draft_ids[rows, at], p.shape[-1]).to(p.dtype)
        residual = torch.clamp(p_at - q_at, min=0)
        # A rejection implies p(x) < q(x), so some mass is left; fall back to p on rounding to zero.
        has_mass = residual.sum(dim=-1, keepdim=True) > 0
        dist = torch.where(rejected[:, None] & has_mass, residual, p_at)
    else:
        dist = p_at
    final = draw(dist, num_accepted)  # [batch]
    tokens = torch.cat([draft_ids, draft_ids.new_zeros(batch, 1)], dim=1)  # [batch, k + 1] (k may be 0)
    tokens[rows, num_accepted] = final
    return tokens, num_accepted + 1
