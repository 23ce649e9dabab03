"""The contract for proposers that run a model, held by a third-party proposer written here with the contract
alone (its own KV cache pages, hidden states of three target layers; it drafts from an oracle of plain decoding's
answers, the last draft of each step spoiled, so verify steps keep some rows and reject others).

- Hidden states: every row the engine delivers equals transformers' forward of the final sequence at that
  position, for layers 0 (the embedding), 1 (input of layer 1) and -1 (the last layer's output before the final
  norm), through chunked prefill, prefix-cache hits (delivered from the first uncached position) and verify steps
  (rejected rows are not counted as computed).
- KV pages: the proposer writes each computed token's id into its own cache at the position's slot and, whenever
  it drafts, reads the whole history back through the request's block table: it must find every token, through
  prefix-cache hits, preemption and chunked prefill.
- The engine-level conformance kit passes for it and for draft_model.
"""

from __future__ import annotations

import random

import pytest
import torch
from tokenleap import LLM, SamplingParams
from tokenleap.engine.cuda_graphs import DecodeGraphs
from tokenleap_plugins import (
    Drafts,
    KVCacheNeeds,
    ProposerBase,
    ProposerManager,
    ProposerNeeds,
    ProposerSpec,
    hookimpl,
)
from tokenleap_plugins.engine_conformance import run_engine_conformance

pytestmark = pytest.mark.usefixtures("torch_one_thread")

LAYERS = (0, 1, -1)


class LedgerProposer(ProposerBase):
    """Records hidden states per (request, position); keeps a ledger of token ids in its KV pages, read back
    whenever it drafts; drafts the plain answer's next tokens (``TRUTH``: prompt -> prompt + answer), the last one
    spoiled."""

    TRUTH: dict[tuple[int, ...], list[int]] = {}

    def __init__(self, config, context) -> None:
        self.needs = ProposerNeeds(hidden_state_layers=LAYERS, kv_cache=KVCacheNeeds(1, 1, 1, dtype="float32"))
        self.bs = context.block_size
        self.hidden: dict[str, dict[int, list[torch.Tensor]]] = {}
        self.first_position: dict[str, int] = {}
        self.ledger_checks = 0
        self.ledger_errors: list[str] = []
        self.preempted: list[str] = []

    def bind_kv_cache(self, cache) -> None:
        self.pages = cache.layers[0][0]  # [num_blocks, block_size, 1, 1]

    def _slot(self, block_ids, position: int) -> tuple[int, int]:
        return block_ids[position // self.bs], position % self.bs

    def propose(self, batch):
        out = []
        for r in batch.requests:
            c = r.computed
            if c is not None and c.count:
                seen = self.hidden.setdefault(r.request_id, {})
                self.first_position.setdefault(r.request_id, c.start)
                for j in range(c.count):
                    pos = c.start + j
                    seen[pos] = [batch.hidden_states[layer][c.hidden_rows + j].clone() for layer in LAYERS]
                    block, off = self._slot(r.block_ids, pos)
                    self.pages[block, off, 0, 0] = float(r.token_ids[pos])
            drafts = []
            if r.max_num_drafts:
                n = len(r.token_ids)
                ledger = [int(self.pages[self._slot(r.block_ids, p)][0, 0]) for p in range(n - 1)]
                self.ledger_checks += 1
                if ledger != list(r.token_ids[: n - 1]):
                    self.ledger_errors.append(f"{r.request_id} at {n} tokens")
                truth = self.TRUTH.get(tuple(r.token_ids[: r.num_prompt_tokens]))
                # without an answer to copy: the last tokens again
                drafts = list(truth[n : n + r.max_num_drafts] if truth else r.token_ids[n - r.max_num_drafts :])
                if len(drafts) > 1:
                    drafts[-1] = (drafts[-1] + 1) % 300
                # the drafts' own pages stay unwritten: the ledger must never rely on them
            out.append(drafts)
        return Drafts(out)

    def on_request_preempted(self, request_id: str) -> None:
        self.preempted.append(request_id)


SPEC = ProposerSpec(method="ledger", build=LedgerProposer, description="test: hidden states and KV pages")


class Plugin:
    @hookimpl
    def tokenleap_register_proposers(self):
        return [SPEC]


def manager() -> ProposerManager:
    m = ProposerManager(env={})
    m.register(Plugin())
    return m


def prompts() -> list[dict]:
    rng = random.Random(5)
    shared = [rng.randrange(3, 300) for _ in range(48)]
    return [{"prompt_token_ids": (shared if i % 2 else []) + [rng.randrange(3, 300) for _ in range(8 + 5 * i)]}
            for i in range(6)]


def padded(llm):
    """Run decode / verify steps and one-request prefill chunks through the graphed path (eagerly, on CPU), as on
    CUDA: hidden states then come out of the padded graph's rows."""
    eng = llm.engine
    eng.runner.graphs = DecodeGraphs(
        eng.model, eng.runner.kv_caches, eng.cfg.max_num_seqs, [1, 1 + eng.num_speculative_tokens],
        eng.runner.max_blocks_per_req, eng.max_model_len, eng.backend, eng.device, use_cuda_graphs=False,
        prefill_query_lens=[32, 64], block_size=eng.cfg.block_size, hidden_state_layers=LAYERS)
    return llm


@pytest.mark.parametrize("graphed", [False, True], ids=["eager", "graphed-path"])
def test_hidden_states_and_kv_pages_reach_a_third_party_proposer(tiny_checkpoint, tiny_hf, graphed):
    folder = tiny_checkpoint("llama")
    params = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    plain = LLM(str(folder), disable_log_stats=True, num_gpu_blocks_override=256)
    want = plain.generate(prompts(), params, use_tqdm=False)
    LedgerProposer.TRUTH = {tuple(o.prompt_token_ids): o.prompt_token_ids + o.outputs[0].token_ids for o in want}
    llm = LLM(str(folder), speculative_config={"method": "ledger", "num_speculative_tokens": 3},
              proposer_manager=manager(), disable_log_stats=True, max_num_seqs=4, max_num_batched_tokens=24,
              num_gpu_blocks_override=14, block_size=16)
    if graphed:
        padded(llm)
        replays = []
        run = llm.engine.runner.graphs.replay_staged
        llm.engine.runner.graphs.replay_staged = lambda *a, **k: (replays.append(a), run(*a, **k))[1]
    outs = llm.generate(prompts(), params, use_tqdm=False)
    if graphed:
        alone = llm.generate(prompts()[2:3], params, use_tqdm=False)  # one request's prefill: a prefill graph
        assert alone[0].outputs[0].token_ids == want[2].outputs[0].token_ids
        outs = outs + alone
        assert {q for _, q, *_ in replays} >= {1, 4, 32}  # decode, verify and prefill graphs all ran
    assert [o.outputs[0].token_ids for o in outs[: len(want)]] == [o.outputs[0].token_ids for o in want]
    proposer = llm.engine.driver.proposer
    assert llm.engine.counters.num_preemptions > 0 and len(proposer.preempted) == llm.engine.counters.num_preemptions
    spec = llm.engine.counters.spec  # verify steps kept some drafts (rows beyond the first) and rejected others
    assert 0 < spec.num_accepted_tokens < spec.num_draft_tokens
    assert proposer.ledger_checks > 30 and not proposer.ledger_errors, proposer.ledger_errors[:5]

    hf = tiny_hf("llama")
    hits = 0
    for o in outs:
        seq = o.prompt_token_ids + o.outputs[0].token_ids
        with torch.no_grad():
            ref = hf(torch.tensor([seq]), output_hidden_states=True).hidden_states  # N + 1 entries, last normed
        seen = proposer.hidden[o.request_id]
        first = proposer.first_position[o.request_id]
        hits += first > 0
        # every position from the first computed one to the one before the last token was delivered
        assert sorted(seen) == list(range(first, len(seq) - 1)), o.request_id
        for pos, (h0, h1, last) in seen.items():
            torch.testing.assert_close(h0, ref[0][0, pos], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(h1, ref[1][0, pos], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(hf.model.norm(last[None])[0], ref[2][0, pos], atol=1e-4, rtol=1e-4)
    assert hits > 0  # prefix-cache hits: delivery started past the cached blocks
    assert llm.engine.blocks.num_free_blocks == llm.engine.blocks.num_usable_blocks


def test_engine_conformance_of_a_model_based_proposer(tiny_checkpoint):
    run_engine_conformance(SPEC, {"num_speculative_tokens": 3}, model=str(tiny_checkpoint("llama")), report=None)


def test_engine_conformance_of_draft_model(tiny_checkpoint, capsys):
    from tokenleap_draft.plugin import SPEC as DRAFT

    target = str(tiny_checkpoint("llama"))
    run_engine_conformance(DRAFT, {"model": target, "num_speculative_tokens": 3}, model=target)
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2:] == ["draft_model: engine: abort mid-generation leaves every KV block free",
                          "draft_model: engine: drafting on the device gives host drafting's tokens and counts"]


def test_the_engine_conformance_kit_holds_a_device_drafter_to_propose(tiny_checkpoint):
    """A device drafter that drafts other tokens than ``propose`` (still lossless: the output is plain decoding's)
    fails the kit, naming the method and both counts."""
    import dataclasses

    from tokenleap_draft.plugin import SPEC as DRAFT
    from tokenleap_draft.proposer import DraftModelProposer
    from tokenleap_plugins.engine_conformance import check_device_drafting

    class OffByOne(DraftModelProposer):
        def device_drafter(self, spec):
            drafter = super().device_drafter(spec)
            pick = drafter.pick
            drafter.pick = lambda g: (pick(g) + 1) % self.vocab_size
            return drafter

    bad = dataclasses.replace(DRAFT, method="draft_off_by_one", build=OffByOne)
    target = str(tiny_checkpoint("llama"))
    with pytest.raises(AssertionError, match=r"draft_off_by_one: drafts / accepted / per position \(\d+, \d+, "):
        check_device_drafting(bad, {"model": target, "num_speculative_tokens": 3}, model=target)
    assert check_device_drafting(DRAFT, {"model": target, "num_speculative_tokens": 3}, model=target)


def test_the_engine_conformance_kit_catches_a_proposer_that_breaks_output(tiny_checkpoint):
    """A proposer whose drafts come with a wrong one-hot probability row for sampling is not the issue here:
    a proposer that returns drafts beyond max_num_drafts makes the engine raise, naming the method."""

    class Greedy(LedgerProposer):
        def propose(self, batch):
            return Drafts([[1] * (r.max_num_drafts + 1) if r.max_num_drafts else [] for r in batch.requests])

    bad = ProposerSpec(method="greedy_bad", build=Greedy)
    with pytest.raises(RuntimeError, match=r"proposer 'greedy_bad' returned drafts \[1, 1, 1, 1\] for request "
                                           r"'\d+': allowed 0\.\.3 tokens"):
        run_engine_conformance(bad, {"num_speculative_tokens": 3}, model=str(tiny_checkpoint("llama")), report=None)
