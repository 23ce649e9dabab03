"""Acceptance of one draft drawn from q against a target p, by verification rule: rejection sampling (expected
1 - TV(p, q)), coupled verification with the drafter drawing by ``noise.sample_with_noise`` (the target's own
noise; Daliri et al. bound (1 - TV) / (1 + TV)), and coupled with a drafter drawing with its own noise (expected
sum p q). Synthetic p (vocab 8192; logits N(0, scale^2)) and q = softmax(logits + N(0, s^2)).
The numbers behind the draft_verification default in docs/sampling.md.

    .venv/bin/python tests/benchmarks/bench_draft_verification.py
"""

from __future__ import annotations

import torch
from tokenleap.sample import noise
from tokenleap.speculative.verify import rejection_sample, verify_coupled

VOCAB, N = 8192, 4000


def main() -> None:
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    print(f"{'logit scale':>11} {'draft noise':>11} {'TV':>6} {'rejection':>10} {'coupled, shared noise':>22} "
          f"{'coupled, own noise':>19} {'bound':>6}")
    for scale in (2.0,):
        logits = torch.randn(VOCAB, generator=g) * scale
        p = torch.softmax(logits, -1)
        for s in (0.1, 0.3, 0.6, 1.0):
            q = torch.softmax(logits + torch.randn(VOCAB, generator=g) * s, -1)
            tv = 0.5 * (p - q).abs().sum().item()
            seeds, zeros = torch.arange(N, dtype=torch.int64), torch.zeros(N, dtype=torch.int64)
            pb, qb = p.expand(N, 2, VOCAB), q.expand(N, 1, VOCAB)
            shared = noise.sample_with_noise(q.expand(N, VOCAB), seeds, zeros, zeros)[:, None]  # [N, 1]
            own = noise.sample_with_noise(q.expand(N, VOCAB), seeds + 10**9, zeros, zeros)[:, None]
            target = noise.sample_with_noise(p.expand(N, VOCAB), seeds, zeros, zeros)
            own_p = torch.stack([target, target], 1)  # [N, 2]: the target's draws (position 1 unused)
            ones = torch.ones(N, dtype=torch.int64)
            acc_shared = (verify_coupled(own_p, shared, ones)[1] == 2).float().mean().item()
            acc_own = (verify_coupled(own_p, own, ones)[1] == 2).float().mean().item()
            uniforms = noise.uniform(seeds, zeros, zeros)[:, None]

            def draw(dist, at, seeds=seeds, zeros=zeros):
                return noise.sample_from_probs(dist, noise.exponential(seeds, zeros, at, VOCAB))

            acc_rej = (rejection_sample(pb, own, ones, qb, uniforms, draw)[1] == 2).float().mean().item()
            print(f"{scale:11.1f} {s:11.1f} {tv:6.3f} {acc_rej:10.3f} {acc_shared:22.3f} {acc_own:19.3f} "
                  f"{(1 - tv) / (1 + tv):6.3f}")


if __name__ == "__main__":
    main()
