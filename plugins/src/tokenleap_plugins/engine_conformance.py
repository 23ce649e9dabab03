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
proposer heard of every preemption; and, when the proposer offers a device drafter, drafting on the device gives
the tokens and the draft and accepted counts per position of drafting on the host (``check_device_drafting``, on
the engine's graphed path run eagerly: ``use_padded_path``).
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
    if check_device_drafting(spec, speculative_config, model=model, seed=seed, num_prompts=num_prompts,
                             max_tokens=max_tokens):
        say(f"{spec.method}: engine: drafting on the device gives host drafting's tokens and counts")
    else:
        say(f"{spec.method}: engine: no device drafter offered")


def use_padded_path(llm: Any, device_drafting: bool = True, bounds: list[int] | None = None,
                    prefill: tuple[int, ...] = ()) -> Any:
    """Put ``llm`` on the engine's graphed decode path run eagerly (``DecodeGraphs(use_cuda_graphs=False)``): the
    padded inputs, null-block writes, device-fed tokens and device drafting of CUDA graphs, minus the capture, on
    any device. ``bounds``: the layer segments (1-token and verify graphs alike); ``prefill``: buckets of
    one-request prefill graphs; ``device_drafting``: verify steps draft on the device when the proposer offers a
    drafter (with the torch reference ops off CUDA). Returns ``llm``."""
    from tokenleap.engine.cuda_graphs import DecodeGraphs, graph_batch_sizes
    from tokenleap.speculative.building import device_drafter

    eng = llm.engine
    bs = eng.cfg.block_size
    drafter = None
    if device_drafting and eng.driver is not None:
        drafter = device_drafter(eng.driver.proposer, max(graph_batch_sizes(eng.cfg.max_num_seqs)),
                                 eng.num_speculative_tokens, eng.max_model_len, bs, eng.device, eng.backend)
    eng.runner.graphs = DecodeGraphs(
        eng.model, eng.runner.kv_caches, eng.cfg.max_num_seqs, [1, 1 + eng.num_speculative_tokens],
        eng.runner.max_blocks_per_req, eng.max_model_len, eng.backend, eng.device, use_cuda_graphs=False,
        decode_bounds=bounds, verify_bounds=bounds, prefill_query_lens=list(prefill), drafter=drafter,
        block_size=bs, hidden_state_layers=eng.runner.hidden_state_layers,
    )
    return llm


def check_device_drafting(spec: ProposerSpec, speculative_config: dict[str, Any], *, model: str, seed: int = 0,
                          num_prompts: int = 12, max_tokens: int = 20) -> bool:
    """When the proposer offers a device drafter: on the graphed path run eagerly, verify steps launched behind the
    step before them and drafted on the device give the tokens, and the draft and accepted counts per position, of
    the same path drafting on the host, with most verify steps launched ahead and every KV block free after.
    Returns False when no drafter is offered."""
    from tokenleap import LLM, SamplingParams

    manager = ProposerManager(env={})
    manager.register(_Plugin(spec), name=f"conformance-device:{spec.method}")

    def build(device_drafting: bool):
        llm = LLM(model, speculative_config={"method": spec.method, **speculative_config}, proposer_manager=manager,
                  disable_log_stats=True, max_num_seqs=4, block_size=16, seed=seed, num_gpu_blocks_override=512)
        return use_padded_path(llm, device_drafting)

    llm = build(True)
    if llm.engine.runner.graphs.drafter is None:
        return False
    prompts = _prompts(seed, num_prompts, min(llm.engine.arch.vocab_size, 300))
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    host = build(False)
    want = [o.outputs[0].token_ids for o in host.generate(prompts, params, use_tqdm=False)]
    ahead = []
    launch = llm.engine.runner.launch

    def noting(scheduled, ahead_of=None, q=1):
        ahead.append(ahead_of is not None and q > 1)
        return launch(scheduled, ahead_of, q)

    llm.engine.runner.launch = noting
    got = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    for i, (a, b) in enumerate(zip(got, want)):
        assert a == b, f"{spec.method}: prompt {i}: drafting on the device gave {a}, on the host {b}"

    def counts(x):
        c = x.engine.counters.spec
        return c.num_draft_tokens, c.num_accepted_tokens, list(c.num_accepted_tokens_per_pos)

    assert counts(llm) == counts(host), (
        f"{spec.method}: drafts / accepted / per position {counts(llm)} on the device, {counts(host)} on the host")
    assert sum(ahead) > 0.3 * len(ahead), (
        f"{spec.method}: {sum(ahead)} of {len(ahead)} steps were verify steps launched ahead and drafted on the device")
    blocks = llm.engine.blocks
    assert blocks.num_free_blocks == blocks.num_usable_blocks, f"{spec.method}: KV blocks held after the requests"
    return True
