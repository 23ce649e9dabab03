"""``DraftModelProposer``: a smaller model with the target's tokenizer drafts k tokens autoregressively.

Its KV cache is the engine's (``needs.kv_cache``: same blocks and block tables as the target), so it follows the
target token for token: each step it computes its own keys and values for exactly the positions the target
computed and kept (prefill chunks, a verify step's input token and accepted drafts), which keeps prefix caching,
preemption and freeing free. For a request that may be drafted for, the same forward continues with the request's
last token (not computed by the target yet) and gives the first draft; ``k - 1`` one-token forwards give the rest.
Their keys and values sit at positions the next verify step covers; rejected ones are overwritten the step
after, when the draft recomputes the positions the target kept. When every run of the step has at most ``k + 2``
tokens (a verify step's kept tokens and the last one: no prefill chunk) and there are at most 64, the first forward
runs padded (``first_forward``: a captured graph per batch bucket on CUDA, the same padded forward eagerly
elsewhere); otherwise unpadded (``forward.paged_forward``).

Greedy requests get argmax drafts. Sampling requests get drafts drawn from the draft's distribution under the
request's temperature / min-p / top-k / top-p, returned with it: verified by rejection sampling (drawn with noise
of the draft's own) or by coupling (drawn with the target's noise, so that a draft is the target's own draw
whenever the two distributions agree there); either way the output keeps the target's distribution.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tokenleap.engine import setup
from tokenleap.model.hub import resolve_model
from tokenleap.model.loader import load_tokenizer, read_arch
from tokenleap.sample import noise
from tokenleap.speculative.catch_up_drafter import CatchUpChainDrafter
from tokenleap.speculative.padded_inputs import unpadded_last_rows
from tokenleap_plugins import (
    DeviceDraftingSpec,
    Drafts,
    KVCacheNeeds,
    ProposeBatch,
    ProposerBase,
    ProposerContext,
    ProposeRequest,
    ProposerKVCache,
    ProposerNeeds,
)

from tokenleap_draft import checks
from tokenleap_draft.chain import GreedyChain
from tokenleap_draft.config import DraftModelConfig
from tokenleap_draft.first_forward import FirstForward
from tokenleap_draft.forward import Run, paged_forward
from tokenleap_draft.sampling import draft_probs, draw


def preflight(config: DraftModelConfig | None, context: ProposerContext) -> None:
    """Everything that can be wrong between draft and target, before any weights load."""
    settings = context.speculative
    dummy = config is not None and config.draft_load_format == "dummy"
    if context.model_loader is None:  # (the conformance kit's simulated engine) the draft loads whole, here
        checks.check_tensor_parallel(settings.draft_tensor_parallel_size)
    else:  # the engine runs it as draft_tensor_parallel_size says: heads it can split, ...
        context.model_loader.check(settings.model, "dummy" if dummy else "auto")
    path = resolve_model(settings.model)
    arch = read_arch(path)
    checks.check_vocab(arch.vocab_size, context.vocab_size, settings.model)
    checks.check_positions(arch.max_position_embeddings, context.max_model_len, settings.max_model_len,
                           settings.model)
    target = context.target_model_path
    if not dummy and target and context.target_load_format != "dummy" and str(path) != str(resolve_model(target)):
        checks.check_tokenizers(load_tokenizer(path), load_tokenizer(target), settings.model)


class DraftModelProposer(ProposerBase):
    def __init__(self, config: DraftModelConfig | None, context: ProposerContext) -> None:
        config = config or DraftModelConfig()
        self.k = context.num_speculative_tokens
        self.device = torch.device(context.device)
        self.backend = context.attention_backend
        self.block_size = context.block_size
        # attention splits are fixed per engine by this bound (the engine's max_model_len plus drafts past it)
        self.max_seq_len = context.max_model_len + 2 * (self.k + 1)
        path = resolve_model(context.speculative.model)
        if context.model_loader is not None:  # as the engine runs models: whole, or sharded over its ranks
            self.model = context.model_loader.load(path, config.draft_load_format, self.max_seq_len)
        else:
            self.model = setup.load_weights(path, context.dtype, self.device, self.max_seq_len, self.backend,
                                            config.draft_load_format, context.seed).model
        arch = self.model.cfg  # the whole draft's
        self.cuda_graphs = context.cuda_graphs
        self.vocab_size = context.vocab_size
        self.needs = ProposerNeeds(kv_cache=KVCacheNeeds(arch.num_hidden_layers, arch.num_key_value_heads,
                                                         arch.head_dim))
        self.kv: Sequence[tuple[torch.Tensor, torch.Tensor]] = ()
        self.chain: GreedyChain | None = None
        self.first: FirstForward | None = None  # None: every first forward unpadded

    def bind_kv_cache(self, cache: ProposerKVCache) -> None:
        self.kv = list(cache.layers)
        max_blocks = -(-self.max_seq_len // self.block_size) + 1
        self.chain = GreedyChain(self.model, self.kv, self.block_size, self.max_seq_len, self.backend, self.device,
                                 max_blocks)
        self.first = FirstForward(self.model, self.kv, self.block_size, self.max_seq_len, self.backend, self.device,
                                  max_blocks, self.k + 2)
        if not self.cuda_graphs:  # the same padded forwards, run eagerly
            self.chain.graphed = self.first.graphed = False

    def device_drafter(self, spec: DeviceDraftingSpec) -> CatchUpChainDrafter | None:
        """Greedy drafts inside the verify graph: the draft model over the tokens the previous step kept (at their
        own positions: shift 1), then its chain, as ``propose`` runs them."""
        if not self.kv:
            return None
        model, kv, vocab = self.model, self.kv, self.vocab_size

        def forward(ids, _parts, positions, meta):  # [n] -> final-normed hidden [n, hidden]
            return model(ids, positions, kv, meta)[0]

        def pick(hidden):
            return model.compute_logits(hidden)[:, :vocab].argmax(dim=-1)

        return CatchUpChainDrafter(forward, lambda ids, _g, positions, meta: forward(ids, (), positions, meta), pick,
                                   (), self.max_seq_len, spec, shift=1)

    @torch.inference_mode()
    def propose(self, batch: ProposeBatch) -> Drafts:
        runs, drafting_runs, drafting = [], [], []  # drafting: indices into batch.requests; drafting_runs: into runs
        for i, r in enumerate(batch.requests):
            c = r.computed
            start, count = (c.start, c.count) if c is not None else (len(r.token_ids) - 1, 0)
            wants = r.max_num_drafts > 0
            stop = len(r.token_ids) if wants else start + count  # drafting: continue with the last token
            if stop <= start:
                continue
            runs.append(Run(r.token_ids[start:stop], start, r.block_ids))
            if wants:
                drafting_runs.append(len(runs) - 1)
                drafting.append(i)
        token_ids: list[list[int]] = [[] for _ in batch.requests]
        probs: list[torch.Tensor | None] = [None for _ in batch.requests]
        if not runs:
            return Drafts(token_ids)
        logits = self._first_logits(runs, drafting_runs)  # [d, vocab] fp32
        if not drafting:
            return Drafts(token_ids)
        reqs = [batch.requests[i] for i in drafting]
        if self.chain is not None and all(r.sampling.greedy for r in reqs):
            # greedy: the k - 1 later drafts fed on the device, read back once
            steps = max(r.max_num_drafts for r in reqs) - 1
            rows = [(len(r.token_ids), r.block_ids, r.max_num_drafts) for r in reqs]
            chained = self.chain.run(logits[:, : self.vocab_size].argmax(dim=-1), rows, steps).tolist()
            for a, i in enumerate(drafting):
                token_ids[i] = chained[a][: reqs[a].max_num_drafts]
            return Drafts(token_ids)
        rows_of = list(range(len(reqs)))  # which requests are still drafting, as rows of `logits`
        step_probs: list[list[torch.Tensor]] = [[] for _ in reqs]
        drafted: list[list[int]] = [[] for _ in reqs]
        for j in range(self.k):
            tokens, p = self._pick(logits[: len(rows_of)], [reqs[a] for a in rows_of], j)
            for row_i, a in enumerate(rows_of):
                drafted[a].append(int(tokens[row_i]))
                if p is not None and not reqs[a].sampling.greedy:
                    step_probs[a].append(p[row_i])
            rows_of = [a for a in rows_of if len(drafted[a]) < reqs[a].max_num_drafts]
            if not rows_of:
                break
            step_runs = [Run([drafted[a][-1]], len(reqs[a].token_ids) - 1 + len(drafted[a]), reqs[a].block_ids)
                         for a in rows_of]
            hidden = paged_forward(self.model, self.kv, step_runs, self.block_size, self.max_seq_len, self.backend,
                                   self.device)
            logits = self.model.compute_logits(hidden)
        any_probs = False
        for a, i in enumerate(drafting):
            token_ids[i] = drafted[a]
            if step_probs[a]:
                probs[i] = torch.stack(step_probs[a])  # [n, vocab]
                any_probs = True
        return Drafts(token_ids, probs if any_probs else None)

    def _first_logits(self, runs: Sequence[Run], drafting_runs: Sequence[int]) -> torch.Tensor | None:
        """The first forward over ``runs`` (writes their keys and values): logits [len(drafting_runs), vocab] fp32 of
        the drafting runs' last tokens (None without any). Padded (a graph on CUDA) when every run fits, else
        unpadded."""
        bucket = self.first.bucket(runs) if self.first is not None else None
        if bucket is not None:
            logits = self.first.run(runs, drafting_runs, bucket)
            return logits if drafting_runs else None
        hidden = paged_forward(self.model, self.kv, runs, self.block_size, self.max_seq_len, self.backend,
                               self.device)  # [rows, hidden]
        if not drafting_runs:
            return None
        rows = unpadded_last_rows([len(r.token_ids) for r in runs], drafting_runs)
        return self.model.compute_logits(hidden[torch.tensor(rows, dtype=torch.int64, device=self.device)])

    def _pick(self, logits: torch.Tensor, reqs: Sequence[ProposeRequest], j: int):
        """Draft j of each row: argmax for greedy requests, a draw from the draft distribution otherwise.
        Returns (tokens [rows], probs [rows, vocab] or None when every row is greedy)."""
        logits = logits[:, : self.vocab_size].float()
        greedy = [r.sampling.greedy for r in reqs]
        if all(greedy):
            return logits.argmax(dim=-1).tolist(), None
        dev = logits.device
        s = [r.sampling for r in reqs]
        temps = torch.tensor([x.temperature if x.temperature > 0 else 1.0 for x in s], device=dev)
        p = draft_probs(logits, temps, torch.tensor([x.top_k for x in s], device=dev),
                        torch.tensor([x.top_p for x in s], device=dev), torch.tensor([x.min_p for x in s], device=dev))
        positions = torch.tensor([len(r.token_ids) - r.num_prompt_tokens + j for r in reqs], device=dev)
        seeds = torch.tensor([x.seed for x in s], device=dev)
        streams = torch.tensor([x.stream for x in s], device=dev)
        # coupled verification accepts a draft iff the target draws the same token with the same noise: draw with
        # it; rejection sampling needs noise of the draft's own
        own = draw(p, seeds, streams, positions)
        shared = noise.sample_with_noise(p, seeds, streams, positions)
        sampled = torch.where(torch.tensor([x.coupled for x in s], device=dev), shared, own)
        argmax = logits.argmax(dim=-1)
        tokens = torch.where(torch.tensor(greedy, device=dev), argmax, sampled)
        return tokens.tolist(), p
