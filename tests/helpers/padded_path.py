"""Putting an ``LLM`` on the graphed decode path, run eagerly (``DecodeGraphs(use_cuda_graphs=False)``): the padded
inputs, null-block writes, device-fed tokens and device drafting of CUDA, minus the capture, on the CPU."""

from __future__ import annotations

from tokenleap import LLM
from tokenleap_plugins.engine_conformance import use_padded_path as _use_padded_path


def use_padded_path(llm: LLM, block_size: int, bounds: list[int] | None = None, prefill: tuple[int, ...] = (),
                    device_drafting: bool = True) -> LLM:
    """``tokenleap_plugins.engine_conformance.use_padded_path`` (``block_size``: the engine's, checked)."""
    assert llm.engine.cfg.block_size == block_size
    return _use_padded_path(llm, device_drafting, bounds, prefill)


def count_launches(llm: LLM) -> dict[str, int]:
    """Count steps launched ahead (runner.launch) and steps that ran the padded forward (graphs.replay_staged)."""
    counts = {"ahead": 0, "padded": 0, "prefill": 0}
    runner = llm.engine.runner
    launch = runner.launch

    def counting(scheduled, ahead_of=None, q=1):
        counts["ahead"] += ahead_of is not None
        return launch(scheduled, ahead_of, q)

    runner.launch = counting
    graphs = runner.graphs
    if graphs is not None:
        replay = graphs.replay_staged

        def counting_replay(b, q, prefill=False):
            counts["prefill" if prefill else "padded"] += 1
            return replay(b, q, prefill)

        graphs.replay_staged = counting_replay
    return counts


def assert_device_drafting_equals_host(make_llm, prompts, params, drafter_type: type) -> tuple[list, LLM]:
    """``make_llm(device_drafting)`` -> an LLM with a speculative config on the padded path. Drafting on the device
    (the proposer's drafter, of ``drafter_type``) gives host drafting's tokens and its draft and accepted counts per
    position, with most verify steps launched behind the step before them and no KV block left taken. Returns the
    tokens (for the caller to compare with plain decoding's) and the device-drafting LLM."""
    from helpers.spec_counts import spec_totals

    def tokens(llm):
        return [list(o.outputs[0].token_ids) for o in llm.generate(prompts, params, use_tqdm=False)]

    host = make_llm(device_drafting=False)
    want = tokens(host)
    llm = make_llm(device_drafting=True)
    assert isinstance(llm.engine.runner.graphs.drafter, drafter_type)
    counts = count_launches(llm)
    assert tokens(llm) == want
    assert spec_totals(llm) == spec_totals(host) and spec_totals(llm)[0] > 0
    assert counts["ahead"] > 0.5 * counts["padded"]
    eng = llm.engine
    assert eng._in_flight is None and eng.blocks.num_free_blocks == eng.blocks.num_usable_blocks
    return want, llm
