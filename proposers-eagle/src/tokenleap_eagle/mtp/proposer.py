"""Method ``mtp``: the target's own multi-token-prediction layer drafts, on its own one-layer paged KV cache kept
in step with the target's.

Every step, for each request the target ran, the layer first computes the rows of the positions the target
computed and kept (``ComputedTokens``): row ``p`` takes ``(embed(x_{p+1}), final_norm(h_p))`` and writes its KV at
``p``. The last of them (position ``n - 2`` of a decoding request with ``n`` tokens) predicts the first draft;
each further draft is one more row at the next position, fed the draft before and the layer's own state. Those
rows' KV are overwritten when the target computes their positions.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenleap.kernels.ops import layer_ops
from tokenleap.model.arch import ModelArchConfig
from tokenleap.model.attention import AttentionMetadata
from tokenleap.speculative.catch_up_drafter import CatchUpChainDrafter
from tokenleap_plugins import (
    DeviceDraftingSpec,
    Drafts,
    KVCacheNeeds,
    ProposeBatch,
    ProposerBase,
    ProposerContext,
    ProposerKVCache,
    ProposerNeeds,
)
from torch.nn import functional as F

from tokenleap_eagle.head_sampling import assemble_drafts, pick_drafts, row_params
from tokenleap_eagle.mtp.layouts import _no_mtp, load_mtp_weights
from tokenleap_eagle.mtp.model import MTPLayer

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class _Rows:
    """One flat forward of the MTP layer: per request a run of consecutive positions."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.positions: list[int] = []
        self.slots: list[int] = []
        self.query_lens: list[int] = []
        self.seq_lens: list[int] = []
        self.tables: list[list[int]] = []

    def add(self, token_ids, start: int, count: int, block_ids, bs: int) -> None:
        self.ids.extend(token_ids)
        pos = range(start, start + count)
        self.positions.extend(pos)
        self.slots.extend(block_ids[p // bs] * bs + p % bs for p in pos)
        self.query_lens.append(count)
        self.seq_lens.append(start + count)
        self.tables.append(list(block_ids))


class MTPProposer(ProposerBase):
    def __init__(self, config: None, ctx: ProposerContext) -> None:
        if ctx.target is None:
            raise ValueError("method 'mtp' needs the target's handles (embedding, LM head)")
        path = ctx.target_model_path
        dtype = _DTYPES.get(ctx.dtype, torch.float32)
        weights = load_mtp_weights(path, dtype)  # raises NoMTPLayersError naming the methods that would work
        cfg_path = Path(path) / "config.json"
        if not cfg_path.is_file():
            raise _no_mtp(path, "no config.json")
        hf = json.loads(cfg_path.read_text())
        if hf.get("model_type") == "mimo":  # MiMo is Qwen2 with MTP layers
            hf = {**hf, "model_type": "qwen2"}
        arch = ModelArchConfig.from_hf_config(hf)
        self.k = ctx.num_speculative_tokens
        self.device = torch.device(ctx.device)
        self.backend = ctx.attention_backend
        self.max_seq_len = ctx.max_model_len + self.k + 1
        ops = layer_ops(ctx.attention_backend)
        self.layer = MTPLayer(arch, weights, ops, self.max_seq_len + 1).to(device=self.device, dtype=dtype).eval()
        self.dtype = dtype
        self.target = ctx.target
        self.embedding = None if weights.embedding is None else weights.embedding.to(self.device)
        self.head = None if weights.head is None else weights.head.to(self.device)
        self.needs = ProposerNeeds(
            hidden_state_layers=(-1,),
            kv_cache=KVCacheNeeds(num_layers=1, num_kv_heads=arch.num_key_value_heads, head_dim=arch.head_dim),
        )
        self.kv = None
        self.block_size = ctx.block_size

    def bind_kv_cache(self, cache: ProposerKVCache) -> None:
        self.kv = cache.layers[0]
        self.block_size = cache.block_size

    def device_drafter(self, spec: DeviceDraftingSpec) -> CatchUpChainDrafter | None:
        """Greedy drafts inside the verify graph: the catch-up and the chain of ``propose``, with the layer's state
        and LM-head input passed side by side ([n, 2 * hidden])."""
        if self.kv is None:
            return None
        hidden = self.layer.input_proj.weight.shape[0]

        def rows(ids, parts, positions, meta):
            return self._state(ids, self.target.final_norm(parts[0]).to(self.dtype), positions, meta)

        def step(ids, g, positions, meta):
            return self._state(ids, g[:, :hidden], positions, meta)

        def pick(g):
            return self._logits(g[:, hidden:]).argmax(dim=-1)

        return CatchUpChainDrafter(rows, step, pick, (-1,), self.max_seq_len, spec)

    def _state(self, ids, states, positions, meta) -> torch.Tensor:  # -> [n, 2 * hidden]: next state, LM-head input
        return torch.cat(self.layer(self._embed(ids), states, positions, self.kv, meta), dim=-1)

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:  # [n] -> [n, hidden]
        if self.embedding is not None:
            return F.embedding(ids, self.embedding)
        return self.target.embed(ids).to(self.dtype)

    def _logits(self, normed: torch.Tensor) -> torch.Tensor:  # [n, hidden] -> [n, vocab] fp32
        if self.head is not None:
            return F.linear(normed, self.head).float()
        return self.target.compute_logits(normed)

    def _run(self, rows: _Rows, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dev = self.device
        width = max(len(t) for t in rows.tables)
        tables = torch.zeros((len(rows.tables), width), dtype=torch.int32)
        for i, t in enumerate(rows.tables):
            tables[i, : len(t)] = torch.tensor(t, dtype=torch.int32)
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(rows.slots, dtype=torch.int64, device=dev),
            block_tables=tables.to(dev),
            query_start_loc=torch.tensor([0, *torch.tensor(rows.query_lens).cumsum(0).tolist()], dtype=torch.int32,
                                         device=dev),
            seq_lens=torch.tensor(rows.seq_lens, dtype=torch.int32, device=dev),
            query_lens_host=rows.query_lens, seq_lens_host=rows.seq_lens, max_query_len=max(rows.query_lens),
            max_seq_len=self.max_seq_len, backend=self.backend,
        )
        ids = torch.tensor(rows.ids, dtype=torch.int64, device=dev)
        positions = torch.tensor(rows.positions, dtype=torch.int64, device=dev)
        return self.layer(self._embed(ids), states.to(self.dtype), positions, self.kv, meta)

    @torch.no_grad()
    def propose(self, batch: ProposeBatch) -> Drafts:
        if self.kv is None:
            raise RuntimeError("method 'mtp': propose called before bind_kv_cache")
        reqs, bs = batch.requests, self.block_size
        drafts: list[list[int]] = [[] for _ in reqs]
        rows, hidden_rows, last_row, ran = _Rows(), [], {}, []
        for i, r in enumerate(reqs):
            c = r.computed
            if c is None:
                continue
            count = min(c.count, len(r.token_ids) - 1 - c.start)  # row p needs x_{p+1}
            if count <= 0:
                continue
            rows.add(r.token_ids[c.start + 1 : c.start + 1 + count], c.start, count, r.block_ids, bs)
            hidden_rows.extend(range(c.hidden_rows, c.hidden_rows + count))
            last_row[i] = len(rows.ids) - 1
            ran.append(i)
        if not ran:
            return Drafts(drafts)
        target_h = self.target.final_norm(batch.hidden_states[-1][torch.tensor(hidden_rows, device=self.device)])
        states, normed = self._run(rows, target_h)
        todo = [i for i in ran if reqs[i].max_num_drafts > 0 and reqs[i].computed.start + reqs[i].computed.count
                == len(reqs[i].token_ids) - 1]
        if not todo:
            return Drafts(drafts)
        pick = torch.tensor([last_row[i] for i in todo], device=self.device)
        states, normed = states[pick], normed[pick]  # [b, hidden]
        infos = [reqs[i].sampling for i in todo]
        n = [len(reqs[i].token_ids) for i in todo]
        picked, probs = [], []
        live = list(range(len(todo)))  # rows of todo still drafting
        for j in range(max(reqs[i].max_num_drafts for i in todo)):
            if j > 0:  # one more row per live request at position n - 2 + j, fed the previous draft
                live = [b for b in live if reqs[todo[b]].max_num_drafts > j]
                step = _Rows()
                prev = picked[-1].tolist()
                for b in live:
                    step.add([prev[b]], n[b] - 2 + j, 1, reqs[todo[b]].block_ids, bs)
                sel = torch.tensor(live, device=self.device)
                new_states, new_normed = self._run(step, states[sel])
                states, normed = states.clone(), normed.clone()
                states[sel], normed[sel] = new_states, new_normed
            params = row_params(infos, [n[b] + j for b in range(len(todo))],
                                [n[b] - reqs[i].num_prompt_tokens + j for b, i in enumerate(todo)], self.device)
            tokens, p = pick_drafts(self._logits(normed), params)
            picked.append(tokens)
            probs.append(p)
        return assemble_drafts(reqs, todo, picked, probs, drafts)
