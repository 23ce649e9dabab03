"""Method mtp: the MTP layer a target checkpoint carries (MiMo's Qwen2 layout, DeepSeek-V3's naming on Llama),
against a plain dense reference; drafts in the engine equal that reference recomputed from scratch (its KV cache
stays in step with the target's), greedy output equals plain decoding, and a target without MTP layers fails."""

from __future__ import annotations

import random

import pytest
import torch
from helpers.tiny_heads import add_mtp_layer
from tokenleap_eagle.mtp.layouts import MTPWeights, load_mtp_weights
from torch.nn import functional as F

KW = dict(max_model_len=256, disable_log_stats=True, kv_cache_memory_bytes=8 << 20)
LAYOUTS = {"mimo": ("qwen2", {}), "deepseek": ("llama", {}), "deepseek-own-head": ("llama", {"own_head": True})}


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    from helpers.tiny_models import make_tiny_checkpoint

    torch.set_num_threads(1)
    out = {}
    for name, (family, kw) in LAYOUTS.items():
        folder = make_tiny_checkpoint(tmp_path_factory.mktemp(name), family)
        out[name] = add_mtp_layer(folder, name.split("-")[0], **kw)
    return out


def _rms(x, g, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * g


def _rope(x, pos, theta):  # x [n, heads, d]
    d = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2).float() / d)
    f = pos[:, None].float() * inv[None]
    cos, sin = torch.cat([f, f], -1).cos()[:, None], torch.cat([f, f], -1).sin()[:, None]
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def dense_mtp(w: MTPWeights, cfg: dict, embed: torch.Tensor, head: torch.Tensor, next_ids: list[int],
              states: torch.Tensor):
    """Rows at positions 0..m-1 (row p: embedding of x_{p+1}, state h_p), causal attention over them, written
    out in plain torch as vLLM's MiMo / DeepSeek MTP modules compute it. Returns (next states, logits)."""
    eps, m = cfg["rms_norm_eps"], len(next_ids)
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = cfg["hidden_size"] // heads
    pos = torch.arange(m)
    theta = cfg.get("rope_theta") or cfg["rope_parameters"]["rope_theta"]
    e = embed[torch.tensor(next_ids)].clone()
    e[0] = 0  # position 0: the embedding is masked
    e, s = _rms(e, w.embed_norm, eps), _rms(states, w.hidden_norm, eps)
    x = torch.cat([e, s] if w.embed_first else [s, e], -1) @ w.input_proj.T
    t = w.decoder
    a = _rms(x, t["input_layernorm.weight"], eps)

    def proj(n):
        y = a @ t[f"self_attn.{n}_proj.weight"].T
        return y + t[f"self_attn.{n}_proj.bias"] if f"self_attn.{n}_proj.bias" in t else y

    q = _rope(proj("q").view(m, heads, d), pos, theta)
    k = _rope(proj("k").view(m, kv, d), pos, theta).repeat_interleave(heads // kv, 1)
    v = proj("v").view(m, kv, d).repeat_interleave(heads // kv, 1)
    att = torch.einsum("qhd,khd->hqk", q, k) / d**0.5
    att = att.masked_fill(torch.triu(torch.ones(m, m, dtype=torch.bool), 1), float("-inf")).softmax(-1)
    x = x + torch.einsum("hqk,khd->qhd", att, v).reshape(m, heads * d) @ t["self_attn.o_proj.weight"].T
    b = _rms(x, t["post_attention_layernorm.weight"], eps)
    x = x + (F.silu(b @ t["mlp.gate_proj.weight"].T) * (b @ t["mlp.up_proj.weight"].T)) @ t["mlp.down_proj.weight"].T
    normed = _rms(x, w.output_norm, eps)
    return (normed if w.state_is_normed else x), normed @ head.T


class Reference:
    """The target (transformers) and its MTP layer in plain torch: the drafts of a token sequence from scratch."""

    def __init__(self, folder) -> None:
        import json

        from transformers import AutoModelForCausalLM, Qwen2ForCausalLM

        self.cfg = json.loads((folder / "config.json").read_text())
        cls = Qwen2ForCausalLM if self.cfg["model_type"] == "mimo" else AutoModelForCausalLM  # MiMo: Qwen2 + MTP
        self.model = cls.from_pretrained(str(folder), dtype=torch.float32).eval()
        self.w = load_mtp_weights(str(folder), torch.float32)
        self.embed = self.model.get_input_embeddings().weight if self.w.embedding is None else self.w.embedding
        self.head = self.model.get_output_embeddings().weight if self.w.head is None else self.w.head

    @torch.no_grad()
    def drafts(self, ids: list[int], k: int) -> list[int]:
        n = len(ids)
        h = self.model.model(input_ids=torch.tensor([ids[:-1]])).last_hidden_state[0]  # [n - 1, d] final-normed
        next_ids, states, out = list(ids[1:]), h, []
        for _ in range(k):
            new_states, logits = dense_mtp(self.w, self.cfg, self.embed, self.head, next_ids, states)
            out.append(int(logits[-1].argmax()))
            next_ids.append(out[-1])
            states = torch.cat([states, new_states[-1:]])
        assert len(next_ids) == n - 1 + k
        return out


def _prompts(seed: int, n: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt_token_ids": [rng.randrange(3, 300) for _ in range(rng.randint(4, 30))]} for _ in range(n)]


def _recording(llm):
    """Wrap the engine's proposer: every (token ids, drafts) it returns for a request that could be drafted."""
    proposer = llm.engine.driver.proposer
    log, propose = [], proposer.propose

    def recorded(batch):
        d = propose(batch)
        for r, t in zip(batch.requests, d.token_ids):
            if r.max_num_drafts:
                log.append((list(r.token_ids), list(t)))
        return d

    proposer.propose = recorded
    return log


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_greedy_equals_plain_and_drafts_equal_the_reference(targets, layout):
    from tokenleap import LLM, SamplingParams

    folder = targets[layout]
    ref = Reference(folder)
    prompts = _prompts(3, 20)
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    plain = LLM(str(folder), **KW)  # the target loads although its checkpoint carries the MTP tensors
    want = [list(o.outputs[0].token_ids) for o in plain.generate(prompts, params, use_tqdm=False)]
    for k in (1, 3):
        llm = LLM(str(folder), speculative_config={"method": "mtp", "num_speculative_tokens": k}, max_num_seqs=8, **KW)
        log = _recording(llm)
        got = [list(o.outputs[0].token_ids) for o in llm.generate(prompts, params, use_tqdm=False)]
        assert got == want, f"k={k}"
        one = [list(llm.generate([p], params, use_tqdm=False)[0].outputs[0].token_ids) for p in prompts[:3]]
        assert one == want[:3], f"k={k}, batch 1"
        assert len(log) > 100
        for ids, drafts in log[:: max(1, len(log) // 25)]:  # ~25 states spread over the run, batch 8 and 1
            assert drafts == ref.drafts(ids, len(drafts)), f"k={k}, {len(ids)} tokens"


def test_preemption_and_chunked_prefill_keep_the_cache_in_step(targets):
    """A KV cache too small for the batch (requests preempted and recomputed) and prefill in chunks: drafts still
    equal the from-scratch reference."""
    from tokenleap import LLM, SamplingParams

    folder = targets["mimo"]
    ref = Reference(folder)
    prompts = _prompts(5, 12)
    params = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
    want = [list(o.outputs[0].token_ids) for o in LLM(str(folder), **KW).generate(prompts, params, use_tqdm=False)]
    llm = LLM(str(folder), speculative_config={"method": "mtp", "num_speculative_tokens": 2}, max_model_len=64,
              disable_log_stats=True, kv_cache_memory_bytes=120_000, max_num_batched_tokens=16, block_size=4)
    log = _recording(llm)
    got = [list(o.outputs[0].token_ids) for o in llm.generate(prompts, params, use_tqdm=False)]
    assert got == want
    assert llm.engine.counters.num_preemptions > 0
    for ids, drafts in log[:: max(1, len(log) // 25)]:
        assert drafts == ref.drafts(ids, len(drafts))


def test_target_without_mtp_layers_fails_before_generation(tiny_checkpoint):
    from tokenleap import LLM

    with pytest.raises(ValueError, match=r"has no multi-token-prediction \(MTP\) layers.*Methods that work with "
                                         r"this model: ngram, suffix, draft_model.*eagle3"):
        LLM(str(tiny_checkpoint("llama")), speculative_config={"method": "mtp", "num_speculative_tokens": 1}, **KW)


def test_layouts_are_read_by_name(targets):
    mimo = load_mtp_weights(str(targets["mimo"]), torch.float32)
    ds = load_mtp_weights(str(targets["deepseek-own-head"]), torch.float32)
    assert (mimo.layout, mimo.embed_first, mimo.state_is_normed, "self_attn.q_proj.bias" in mimo.decoder) == (
        "mimo", False, True, True)
    assert (ds.layout, ds.embed_first, ds.state_is_normed, ds.head.shape) == ("deepseek", True, False, (320, 64))
    assert load_mtp_weights(str(targets["deepseek"]), torch.float32).head is None


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_device_drafting_equals_host_drafting(targets, layout):
    """The MTP layer's device drafter (catch-up and chain inside the verify graph, from the previous step's tokens
    and hidden states; here the graphed path run eagerly on the CPU): plain decoding's tokens, the draft and
    accepted counts per position of host drafting in the same path, most verify steps launched behind the step
    before them."""
    from helpers.padded_path import assert_device_drafting_equals_host, use_padded_path
    from tokenleap import LLM, SamplingParams
    from tokenleap.speculative.catch_up_drafter import CatchUpChainDrafter

    folder = str(targets[layout])
    prompts = _prompts(5, 10)
    params = [SamplingParams(temperature=0, max_tokens=m, ignore_eos=True) for m in (9, 20, 31, 14, 25) * 2]
    spec = {"method": "mtp", "num_speculative_tokens": 3}

    def make_llm(device_drafting: bool) -> LLM:
        llm = LLM(folder, speculative_config=spec, max_num_seqs=4, block_size=16, **KW)
        return use_padded_path(llm, 16, device_drafting=device_drafting)

    got, _ = assert_device_drafting_equals_host(make_llm, prompts, params, CatchUpChainDrafter)
    assert got == [list(o.outputs[0].token_ids) for o in LLM(folder, **KW).generate(prompts, params, use_tqdm=False)]
