"""Method ``mlp_speculator`` (alias ``mlp``): drafts from the target's final hidden state of the last token it
computed for a request and the token that state predicted, one speculator stage per draft. No KV cache: the
state of a request is that one hidden row, read from the step that just ran.

When every drafting request is greedy, all stages run in one padded device pass (greedy.py: a captured graph per
batch-size bucket on CUDA); otherwise stage by stage, sampled requests drawing from each stage's distribution."""

from __future__ import annotations

import torch
from tokenleap_plugins import (
    DeviceDraftingSpec,
    Drafts,
    ProposeBatch,
    ProposerBase,
    ProposerContext,
    ProposerNeeds,
)

from tokenleap_eagle.head_sampling import assemble_drafts, pick_drafts, row_params, shifted, upload
from tokenleap_eagle.mlp_speculator.device import MLPDeviceDrafter
from tokenleap_eagle.mlp_speculator.greedy import GreedyDrafter
from tokenleap_eagle.mlp_speculator.loader import load_speculator, read_config, resolve_speculator

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_fits(cfg, ctx: ProposerContext, where: str) -> None:
    """The speculator's shape against the target and k: every mismatch fails before any weight is read."""
    if ctx.num_speculative_tokens > cfg.n_predict:
        raise ValueError(
            f"speculative_config.num_speculative_tokens={ctx.num_speculative_tokens}, but the MLP speculator "
            f"{where} has n_predict={cfg.n_predict} stages: use num_speculative_tokens <= {cfg.n_predict}"
        )
    if ctx.hidden_size and cfg.emb_dim != ctx.hidden_size:
        raise ValueError(
            f"the MLP speculator {where} was made for hidden size emb_dim={cfg.emb_dim}, but the target's "
            f"hidden size is {ctx.hidden_size}: it is a speculator for another model"
        )
    if cfg.vocab_size != ctx.vocab_size:
        raise ValueError(
            f"the MLP speculator {where} has vocab_size={cfg.vocab_size}, but the target's vocabulary has "
            f"{ctx.vocab_size} entries: it is a speculator for another model"
        )


class MLPSpeculatorProposer(ProposerBase):
    needs = ProposerNeeds(hidden_state_layers=(-1,))

    def __init__(self, config: None, ctx: ProposerContext) -> None:
        name = ctx.speculative.model
        if not name:
            raise ValueError("speculative_config.model is required for method 'mlp_speculator': the folder (or "
                             "alias) of an MLP speculator checkpoint")
        folder = resolve_speculator(name)
        check_fits(read_config(folder), ctx, repr(name))
        self.device = torch.device(ctx.device)
        self.model = load_speculator(folder, _DTYPES.get(ctx.dtype, torch.float32), self.device)
        target = ctx.target
        self._final_norm = target.final_norm if target is not None else (lambda h: h)
        # None: greedy batches drafted stage by stage too (tests compare)
        self.greedy: GreedyDrafter | None = GreedyDrafter(self.model, self._final_norm, ctx.num_speculative_tokens,
                                                          self.device)
        self.greedy.graphed = self.greedy.graphed and ctx.cuda_graphs

    def device_drafter(self, spec: DeviceDraftingSpec) -> MLPDeviceDrafter:
        """Greedy drafts inside the verify graph (the engine uses it for steps of greedy requests only)."""
        return MLPDeviceDrafter(self.model, self._final_norm, spec)

    @torch.no_grad()
    def propose(self, batch: ProposeBatch) -> Drafts:
        reqs = batch.requests
        todo = [i for i, r in enumerate(reqs) if r.max_num_drafts > 0 and r.computed and r.computed.count > 0]
        drafts: list[list[int]] = [[] for _ in reqs]
        if not todo:
            return Drafts(drafts)
        model = self.model
        infos = [reqs[i].sampling for i in todo]
        steps = max(reqs[i].max_num_drafts for i in todo)
        rows = [reqs[i].computed.hidden_rows + reqs[i].computed.count - 1 for i in todo]  # each one's last row
        last = [reqs[i].token_ids[-1] for i in todo]  # the token that row predicted
        if self.greedy is not None and all(s.greedy for s in infos):
            host = self.greedy.run(batch.hidden_states[-1], rows, last, steps)  # [b, steps]
            for b, i in enumerate(todo):
                drafts[i] = host[b][: reqs[i].max_num_drafts]
            return Drafts(drafts)
        # one upload of the rows to read and the tokens to feed (each torch.tensor(list, device=cuda) is a copy
        # of its own that waits for the device)
        index = upload([rows, last], self.device)  # [2, b]
        tokens = index[1]  # [b]
        hidden = self._final_norm(batch.hidden_states[-1][index[0]])  # [b, hidden]
        state = model.input_state(hidden.to(model.head[0].weight.dtype))
        # greedy batches take the argmax (what pick_drafts does when every row is greedy) without building the
        # per-row sampling tensors; others build them once, the positions moving by one per step
        params = None
        if not all(s.greedy for s in infos):
            params = row_params(infos, [len(reqs[i].token_ids) for i in todo],
                                [len(reqs[i].token_ids) - reqs[i].num_prompt_tokens for i in todo], self.device)
        picked, probs = [], []
        for j in range(steps):
            state = model.stage(j, state, tokens)
            logits = model.logits(j, state)  # [b, vocab] float32
            if params is None:
                tokens, p = logits.argmax(dim=-1), None
            else:
                tokens, p = pick_drafts(logits, shifted(params, j))  # [b], [b, vocab] | None
            picked.append(tokens)
            probs.append(p)
        return assemble_drafts(reqs, todo, picked, probs, drafts)
