"""Conformance of a proposer inside a real engine: what the simulated engine of ``testing`` cannot show for a
proposer that runs a model (its own KV cache pages, hidden states, preemption).

    from tokenleap_plugins.engine_conformance import run_engine_conformance
    def test_engine_conformance(tiny_target_folder):
        run_engine_conformance(my_plugin.SPEC, {"model": draft_folder, "num_speculative_tokens": 3},
                               model=tiny_target_folder)

Needs ``tokenleap`` (imported here, not by the package): a proposer that runs a model depends on it anyway.
Checks, each with a message naming the method: greedy output equals plain decoding through chunked prefill,
prefix-cache hits and preemption (a KV cache too small for the batch); a request aborted mid-generation and the
finished ones leave every KV block free (the proposer's pages are the target's blocks, freed with them); the
proposer heard of every preemption.
"""

from __future__ import annotations

import random
from typing import Any

from tokenleap_plugins.hookspecs import hookimpl
from tokenleap_plugins.manager import ProposerManager
from tokenleap_plugins.proposer import ProposerSpec


class _Plugin:
    def __init__(self, spec: ProposerSpec) -> None:
        self.spec = spec

    @hookimpl
    def tokenleap_register_proposers(self):
        return [self.spec]


def _prompts(seed: int, n: int, vocab: int) -> list[dict]:
    rng = random.Random(f"engine-conformance/{seed}")
    shared = [rng.randrange(3, vocab) for _ in range(40)]
    out = []
    for i in range(n):
        body = [rng.randrange(3, vocab) for _ in range(rng.randrange(4, 40))]
        body += body[: rng.randrange(0, len(body))]  # repeats: something to draft
        out.append({"prompt_token_ids": (shared if i % 2 else []) + body})
    return out


def run_engine_conformance(spec: ProposerSpec, speculative_config: dict[str, Any], *, model: str, seed: int = 0,
                           num_prompts: int = 12, max_tokens: int = 20, report: Any = print) -> None:
    from tokenleap import LLM, SamplingParams  # a model-based proposer depends on tokenleap

    say = report or (lambda *_: None)
    manager = ProposerManager(env={})
    manager.register(_Plugin(spec), name=f"conformance:{spec.method}")
    common = dict(disable_log_stats=True, max_num_seqs=8, max_num_batched_tokens=32, block_size=16, seed=seed,
                  enable_prefix_caching=True)
    plain = LLM(model, num_gpu_blocks_override=512, **common)
    vocab = plain.engine.arch.vocab_size
    prompts = _prompts(seed, num_prompts, min(vocab, 300))
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    want = [o.outputs[0].token_ids for o in plain.generate(prompts, params, use_tqdm=False)]
    del plain
    # room for about three requests at a time: eight running ones preempt each other
    llm = LLM(model, speculative_config={"method": spec.method, **speculative_config}, proposer_manager=manager,
              num_gpu_blocks_override=14, **common)
    engine = llm.engine
    heard: list[str] = []
    hook = getattr(engine.driver.proposer, "on_request_preempted", None)
    if hook is not None:
        def noting(request_id, hook=hook):
            heard.append(request_id)
            return hook(request_id)

        engine.driver.proposer.on_request_preempted = noting
    got = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    for i, (a, b) in enumerate(zip(got, want)):
        assert a == b, f"{spec.method}: prompt {i}: greedy output {a} differs from plain decoding {b}"
    counters = engine.counters
    assert counters.num_preemptions > 0, f"{spec.method}: the scenario should have preempted requests"
    assert engine.blocks.prefix_hits > 0, f"{spec.method}: the scenario should have hit the prefix cache"
    assert counters.spec.num_draft_tokens > 0, f"{spec.method}: no drafts at all"
    assert hook is None or len(heard) == counters.num_preemptions, (
        f"{spec.method}: {counters.num_preemptions} preemptions, the proposer heard of {len(heard)}")
    free, usable = engine.blocks.num_free_blocks, engine.blocks.num_usable_blocks
    assert free == usable, f"{spec.method}: {usable - free} KV blocks still held after every request finished"
    say(f"{spec.method}: engine: greedy == plain through chunked prefill, {engine.blocks.prefix_hits} prefix-cache "
        f"hit tokens, {counters.num_preemptions} preemptions; all KV blocks free")
    # an abort mid-generation frees its blocks (and the proposer's pages, the same blocks) at once
    from tokenleap.engine.request import Request

    requests = [Request(request_id=f"abort-{i}", prompt_token_ids=p["prompt_token_ids"], params=params, seed=i,
                        stream=0, max_tokens=max_tokens, eos_token_ids=frozenset())
                for i, p in enumerate(prompts[:3])]
    for r in requests:
        engine.add_request(r)
    for _ in range(4):
        engine.step()
    engine.abort_request(requests[1].request_id)
    while engine.has_unfinished_requests():
        engine.step()
    assert engine.blocks.num_free_blocks == usable, (
        f"{spec.method}: {usable - engine.blocks.num_free_blocks} KV blocks leaked after an abort")
    assert requests[1].finish_reason == "abort" and requests[0].output_token_ids == want[0], (
        f"{spec.method}: the requests beside an aborted one changed")
    say(f"{spec.method}: engine: abort mid-generation leaves every KV block free")
