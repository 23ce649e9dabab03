"""The EAGLE / EAGLE-3 proposer: keeps the head's KV cache in step with the target, then drafts a chain.

Every step the engine sends each request's computed positions ``start .. start + count - 1`` with the target's
hidden states of those rows. Row p of the head takes (embed(x_{p+1}), h_p): x_{p+1} is always known (the next
prompt token, or the token sampled in this step), so the head writes its KV for exactly the positions the target
kept (prefill chunks included) in one flat catch-up pass. The last row (position P, the last computed one)
yields the first draft; each further draft step feeds (embed(previous draft), the head's own output) at P + j,
writing into the request's lookahead slots (overwritten once the target computes those positions).

When every drafting request is greedy and every catch-up run is at most k + 1 rows (a decode or verify step), the
catch-up and the first draft run over rows padded to a bucket of requests (first_forward.py: one captured graph per
bucket on CUDA, the same padded forward eagerly elsewhere); other steps (prefill chunks, sampled requests) run it
unpadded. When every drafting request is greedy, the drafts after the first are chained on the device (chain.py:
argmax fed to the next step, one read-back, captured graphs on CUDA); otherwise each step is chosen (and, for
sampled requests, drawn with its probabilities) on the host side, step by step.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from tokenleap.engine.setup import torch_dtype
from tokenleap.model.attention import AttentionMetadata
from tokenleap.speculative.catch_up_drafter import CatchUpChainDrafter
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

from tokenleap_eagle.catch_up import CatchUp, catch_up
from tokenleap_eagle.chain import HeadChain
from tokenleap_eagle.checkpoint import load_head
from tokenleap_eagle.first_forward import FirstForward
from tokenleap_eagle.head import head_ops
from tokenleap_eagle.head_sampling import upload_flat
from tokenleap_eagle.heads_registry import resolve_head
from tokenleap_eagle.sampling import choose


class EagleConfig(BaseModel):
    """Method keys of ``eagle`` / ``eagle3``."""

    model_config = ConfigDict(extra="forbid")

    # eagle3: the target layers whose input feeds the head (three of them); default: the checkpoint's record,
    # else (2, N // 2, N - 3) as vLLM and the EAGLE repo take them.
    eagle_aux_hidden_state_layer_ids: list[int] | None = None


def default_aux_layers(num_layers: int) -> tuple[int, int, int]:
    return (2, num_layers // 2, num_layers - 3)


class EagleProposer(ProposerBase):
    def __init__(self, kind: str, config: EagleConfig | None, ctx: ProposerContext) -> None:
        config = config or EagleConfig()
        if ctx.target is None:
            raise ValueError(f"method {kind!r} needs the target's embedding and LM head (ProposerContext.target)")
        path = resolve_head(ctx.speculative.model)
        max_len = max(ctx.speculative.max_model_len or 0, ctx.max_model_len) + ctx.num_speculative_tokens + 1
        self.device = torch.device(ctx.device)
        dtype = torch_dtype(ctx.dtype or None, torch.float32)
        head = load_head(path, max_model_len=max_len, dtype=dtype, device=self.device)
        head.ops = head_ops(ctx.attention_backend)  # core's Triton kernels on CUDA
        _check_fits(kind, head.cfg, ctx, str(path))
        if kind == "eagle" and config.eagle_aux_hidden_state_layer_ids is not None:
            raise ValueError("speculative_config.eagle_aux_hidden_state_layer_ids applies to method 'eagle3' only "
                             "(EAGLE-1 reads the last layer)")
        self.kind, self.head, self.k = kind, head, ctx.num_speculative_tokens
        self.max_len = max_len
        self.vocab_size = ctx.vocab_size
        self.backend = ctx.attention_backend
        self.target = ctx.target
        if kind == "eagle3":
            layers = config.eagle_aux_hidden_state_layer_ids or head.cfg.aux_layer_ids or default_aux_layers(
                ctx.num_hidden_layers)
            layers = tuple(int(i) for i in layers)
            n = ctx.num_hidden_layers
            if len(layers) != 3 or not all(-n <= i <= n for i in layers):
                raise ValueError(f"speculative_config.eagle_aux_hidden_state_layer_ids={list(layers)}: three layer "
                                 f"indices of the {n}-layer target are needed (allowed {-n}..{n})")
            self.layers = layers
            self.draft_target_ids = head.target_ids()  # [draft_vocab]
        else:
            self.layers = (-1,)
        lc = head.cfg.layer
        self.needs = ProposerNeeds(hidden_state_layers=self.layers,
                                   kv_cache=KVCacheNeeds(1, lc.num_key_value_heads, lc.head_dim))
        self.kv: tuple[torch.Tensor, torch.Tensor] | None = None
        self.block_size = ctx.block_size
        self.chain: HeadChain | None = None  # None: greedy requests drafted step by step too (tests compare)
        self.first: FirstForward | None = None  # None: every catch-up unpadded (tests compare)
        self.target_hidden = ctx.hidden_size
        self.cuda_graphs = ctx.cuda_graphs

    def bind_kv_cache(self, cache: ProposerKVCache) -> None:
        self.kv = tuple(cache.layers[0])
        self.block_size = cache.block_size
        max_blocks = -(-self.max_len // self.block_size)
        self.chain = HeadChain(self._step, self._argmax, self.block_size, self.max_len, self.backend, self.device,
                               max_blocks)
        self.first = FirstForward(self._catch_up, self._argmax, self.layers, self.target_hidden, self.block_size,
                                  self.max_len, self.backend, self.device, max_blocks, self.k + 1)
        if not self.cuda_graphs:  # enforce_eager, or a target whose handles run on several ranks: eagerly
            self.chain.graphed = self.first.graphed = False

    def device_drafter(self, spec: DeviceDraftingSpec) -> CatchUpChainDrafter | None:
        """Greedy drafts inside the verify graph (the engine uses it for steps of greedy requests only)."""
        if self.kv is None:
            return None
        return CatchUpChainDrafter(self._catch_up, self._step, self._argmax, self.layers, self.max_len, spec)

    # ---- drafting ----

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:  # [n] -> [n, hidden]
        if self.head.embed_tokens is not None:
            return self.head.embed_tokens(ids)
        return self.target.embed(ids)

    def _target_hidden(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """The target's hidden rows of ``self.layers`` ([n, target_hidden] each) -> the head's h [n, hidden]."""
        if self.kind == "eagle3":
            aux = torch.cat(parts, dim=-1)  # [n, 3 * target_hidden]
            return self.head.combine(aux.to(self.head.fc.weight.dtype))
        return self.target.final_norm(parts[0])

    def _catch_up(self, ids: torch.Tensor, parts: list[torch.Tensor], positions: torch.Tensor,
                  meta: AttentionMetadata) -> torch.Tensor:
        """The head over catch-up rows: (embed(ids [n]), the target's hidden rows ``parts``) at positions [n] ->
        its output [n, hidden]; writes the head's KV at ``meta.slot_mapping``."""
        h = self._target_hidden(parts)
        return self.head(self._embed(ids).to(h.dtype), h, positions, self.kv, meta)

    def _logits(self, out: torch.Tensor) -> torch.Tensor:  # [n, hidden] -> [n, draft_vocab] fp32
        if self.kind == "eagle3":
            return self.head.draft_logits(out)
        return self.target.compute_logits(out)

    def _argmax(self, out: torch.Tensor) -> torch.Tensor:
        """[n, hidden] -> [n] int64 target ids: the greedy drafts, argmax of ``_target_logits`` (eagle3: over the
        draft vocabulary, then mapped; the same token, ties aside, as d2t keeps the draft ids' order)."""
        if self.kind == "eagle3":
            return self.head.draft_to_target(self.head.draft_logits(out).argmax(dim=-1))
        return self.target.compute_logits(out)[:, : self.vocab_size].argmax(dim=-1)

    def _step(self, ids: torch.Tensor, g: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
              ) -> torch.Tensor:
        """One draft step: (embed(ids [n]), g [n, hidden]) at positions [n] -> the head's output [n, hidden]."""
        return self.head(self._embed(ids).to(g.dtype), g, positions, self.kv, meta)

    def _meta(self, tables: torch.Tensor, query_lens: list[int], seq_lens: list[int], slots: list[int]
              ) -> AttentionMetadata:
        cu = [0]
        for q in query_lens:
            cu.append(cu[-1] + q)
        dev = self.device
        return AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.int64, device=dev), block_tables=tables,
            query_start_loc=torch.tensor(cu, dtype=torch.int32, device=dev),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=dev), query_lens_host=query_lens,
            seq_lens_host=seq_lens, max_query_len=max(query_lens), max_seq_len=self.max_len, backend=self.backend,
        )

    def _slot(self, block_ids: Sequence[int], p: int) -> int:
        return block_ids[p // self.block_size] * self.block_size + p % self.block_size

    @torch.no_grad()
    def propose(self, batch: ProposeBatch) -> Drafts:
        if self.kv is None:
            raise RuntimeError("EAGLE proposer used before bind_kv_cache()")
        reqs = batch.requests
        # 1. catch-up over every computed row whose next token is known
        cu = catch_up(reqs)
        if not cu.runs:
            return Drafts([[] for _ in reqs])
        drafting = [cu.caught[j] for j in cu.active]  # indices into reqs
        greedy = self.chain is not None and all(reqs[i].sampling.greedy for i in drafting)
        padded = self.first if greedy and self.first is not None and self.first.fits(batch.hidden_states) else None
        bucket = padded.bucket(cu.runs) if padded is not None else None
        if bucket is not None:  # a decode / verify step: padded (a graph on CUDA), with the first drafts
            g, first = padded.run(cu.runs, cu.active, bucket, cu.hidden_rows, batch.hidden_states)
        else:
            g, tables = self._catch_up_unpadded(reqs, cu, batch.hidden_states)
        # 2. the chain, from each drafting request's last row (its last computed position P = len - 2)
        if not drafting:
            return Drafts([[] for _ in reqs])
        if bucket is not None:
            return self._draft_greedy(reqs, drafting, g, first)
        if greedy:
            return self._draft_greedy(reqs, drafting, g, self._argmax(g))
        return self._draft_stepwise(reqs, drafting, g, tables[torch.tensor(cu.active, device=self.device)])

    def _catch_up_unpadded(self, reqs: Sequence[ProposeRequest], cu: CatchUp, hidden_states
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """The catch-up over the runs one after the other (any run lengths): writes the head's KV of their rows;
        returns (g [len(cu.active), hidden]: the head's output at the drafting runs' last rows, the runs' block
        tables [len(cu.runs), width] int32)."""
        ids, positions, rows, slots, qlens, slens = [], [], [], [], [], []
        for run, row in zip(cu.runs, cu.hidden_rows, strict=True):
            count = len(run.token_ids)
            ids += list(run.token_ids)
            positions += range(run.start, run.start + count)
            rows += range(row, row + count)
            slots += [self._slot(run.block_ids, p) for p in range(run.start, run.start + count)]
            qlens.append(count)
            slens.append(run.start + count)
        last_rows = list(itertools.accumulate(qlens, initial=-1))[1:]
        # every index the catch-up and the chain's start need, uploaded in one copy (a torch.tensor(list,
        # device=cuda) apiece would be a copy each that waits for the device)
        width = max(max(len(r.block_ids) for r in cu.runs), 1)
        table = np.zeros((len(cu.runs), width), dtype=np.int64)
        for j, r in enumerate(cu.runs):
            table[j, :len(r.block_ids)] = r.block_ids
        parts = [rows, ids, positions, slots, [0, *itertools.accumulate(qlens)], slens,
                 [last_rows[j] for j in cu.active]]
        flat = np.concatenate([np.fromiter(itertools.chain.from_iterable(parts), np.int64), table.reshape(-1)])
        dev_all = upload_flat(flat, self.device)
        cuts = list(itertools.accumulate([len(p) for p in parts], initial=0))
        rows_t, ids_t, positions_t, slots_t, cu_t, slens_t, last_t = (dev_all[a:b] for a, b in zip(cuts, cuts[1:]))
        tables = dev_all[cuts[-1]:].view(len(cu.runs), width).to(torch.int32)
        meta = AttentionMetadata(
            slot_mapping=slots_t, block_tables=tables, query_start_loc=cu_t.to(torch.int32),
            seq_lens=slens_t.to(torch.int32), query_lens_host=qlens, seq_lens_host=slens, max_query_len=max(qlens),
            max_seq_len=self.max_len, backend=self.backend,
        )
        out = self._catch_up(ids_t, [hidden_states[i][rows_t] for i in self.layers], positions_t, meta)
        return out[last_t], tables  # [a, hidden]

    def _draft_greedy(self, reqs: Sequence[ProposeRequest], drafting: list[int], g: torch.Tensor,
                      first: torch.Tensor) -> Drafts:
        """Every draft an argmax on the device, read back once. g: [len(drafting), hidden] at each P; first:
        [len(drafting)] int64, the first drafts (its argmax)."""
        rs = [reqs[i] for i in drafting]
        rows = [(len(r.token_ids) - 1, r.block_ids, r.max_num_drafts) for r in rs]  # n = P + 1
        steps = max(r.max_num_drafts for r in rs) - 1
        chained = self.chain.run(g, first, rows, steps).tolist()  # [a, steps + 1]: the one host sync
        drafts: list[list[int]] = [[] for _ in reqs]
        for a, i in enumerate(drafting):
            drafts[i] = chained[a][: rs[a].max_num_drafts]
        return Drafts(drafts)

    def _draft_stepwise(self, reqs: Sequence[ProposeRequest], drafting: list[int], g: torch.Tensor,
                        tables: torch.Tensor) -> Drafts:
        """Each step chosen by ``choose`` (sampled requests: drawn, with their probabilities) and read back.
        g: [len(drafting), hidden] at each P; tables: [len(drafting), width] int32."""
        dev = self.device
        drafts: list[list[int]] = [[] for _ in reqs]
        step_probs: dict[int, list[torch.Tensor]] = {}
        active = list(drafting)  # indices into reqs, in the rows' order
        for step in range(self.k):
            rs = [reqs[i] for i in active]
            positions = torch.tensor([len(r.token_ids) - r.num_prompt_tokens + step for r in rs], device=dev)
            tokens_t, p = choose(self._target_logits(g), [r.sampling for r in rs], positions)  # [a] target ids
            tokens = tokens_t.tolist()
            keep = []
            for a, i in enumerate(active):
                drafts[i].append(tokens[a])
                if p is not None and not reqs[i].sampling.greedy:
                    step_probs.setdefault(i, []).append(p[a])
                if len(drafts[i]) < reqs[i].max_num_drafts:
                    keep.append(a)
            if not keep:
                break
            pos = [len(reqs[active[a]].token_ids) - 1 + step for a in keep]  # P + step + 1, P = len - 2
            keep_t = torch.tensor(keep, device=dev)
            active = [active[a] for a in keep]
            tables = tables[keep_t]
            meta = self._meta(tables, [1] * len(keep), [q + 1 for q in pos],
                              [self._slot(reqs[i].block_ids, q) for i, q in zip(active, pos)])
            g = self._step(tokens_t[keep_t], g[keep_t], torch.tensor(pos, device=dev), meta)
        if not step_probs:
            return Drafts(drafts)
        probs: list[torch.Tensor | None] = [None for _ in reqs]
        for i, rows in step_probs.items():
            probs[i] = torch.stack(rows)  # [n_i, vocab]
        return Drafts(drafts, probs)

    def _target_logits(self, out: torch.Tensor) -> torch.Tensor:
        """[n, hidden] -> [n, target vocab] float32; eagle3: the draft vocabulary's logits at their target ids,
        -inf elsewhere."""
        logits = self._logits(out)
        if self.kind == "eagle":
            return logits[:, : self.vocab_size]
        full = logits.new_full((logits.shape[0], self.vocab_size), float("-inf"))
        full[:, self.draft_target_ids] = logits
        return full


def _check_fits(kind: str, cfg, ctx: ProposerContext, source: str) -> None:
    """The head must match the method and fit the target: hidden size, vocabulary, draft ids in range."""
    if cfg.kind != kind:
        raise ValueError(f"speculative_config.model={source!r} is an {cfg.kind!r} head ({cfg.layout} layout); "
                         f"method {kind!r} needs an {kind!r} head: use method {cfg.kind!r}")
    target_hidden = ctx.hidden_size
    if kind == "eagle" and cfg.hidden_size != target_hidden:
        raise ValueError(f"EAGLE head {source}: hidden_size={cfg.hidden_size} does not fit the target's "
                         f"hidden_size={target_hidden}")
    if kind == "eagle3" and cfg.target_hidden_size != target_hidden:
        raise ValueError(f"EAGLE-3 head {source}: its fc takes 3 x {cfg.target_hidden_size} (target_hidden_size="
                         f"{cfg.target_hidden_size}); the target's hidden_size={target_hidden} does not fit")
    if cfg.layer.vocab_size != ctx.vocab_size:
        raise ValueError(f"EAGLE head {source}: vocab_size={cfg.layer.vocab_size} does not fit the target's "
                         f"vocab_size={ctx.vocab_size}")
    emb = ctx.target.embedding_weight
    if emb is not None and cfg.hidden_size != emb.shape[1] and cfg.kind == "eagle3" and not cfg.has_embedding:
        raise ValueError(f"EAGLE-3 head {source}: hidden_size={cfg.hidden_size} cannot share the target's "
                         f"embedding of width {emb.shape[1]}")
