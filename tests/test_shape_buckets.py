"""Eager steps padded to a few row counts (``engine/shape_buckets.py``; on by default on CUDA, where cuBLAS picks
a kernel per new shape on the host): the buckets' arithmetic, and that a padded engine gives the tokens of an
unpadded one (padding tokens write only the null block, no request attends to them, the proposer sees only real
rows) with the forward really run on bucketed row counts. Run on CPU with the torch attention (float32)."""

from __future__ import annotations

import pytest
from helpers.eagle_heads import write_eagle3_head
from helpers.tiny_models import TINY_VOCAB
from tokenleap import LLM, SamplingParams
from tokenleap.engine.shape_buckets import SMALL, bucket

pytestmark = pytest.mark.usefixtures("torch_one_thread")

PROMPTS = ["The quick brown fox jumps over the lazy dog " * 3, "Hello", "one two three four five six seven",
           "a b c d e f g h i j k l m n o p q r s t u v w x y z " * 2, "def f(x):\n    return x", "1 2 3 4 5 6"]


def test_bucket_bounds_waste_and_counts_shapes():
    values = [bucket(n) for n in range(1, 8193)]
    assert values[:SMALL] == list(range(1, SMALL + 1))  # few rows: unpadded
    assert all(b >= n for n, b in enumerate(values, 1)) and values == sorted(values)
    assert all(b - n <= 15 for n, b in enumerate(values, 1) if n <= 128)
    assert all((b - n) * 8 <= n for n, b in enumerate(values, 1) if n > 128)
    assert len(set(values)) == 71 and bucket(100) == 112 and bucket(5800) == 6144 and bucket(8192) == 8192
    assert all(bucket(b) == b for b in set(values))  # a bucket is its own bucket


def rows_seen(llm: LLM) -> list[int]:
    """Token counts of the model's eager forwards, recorded from now on."""
    seen: list[int] = []
    runner = llm.engine.runner
    model = runner.model

    def forward(ids, *args, **kwargs):
        seen.append(int(ids.shape[0]))
        return model(ids, *args, **kwargs)

    runner.model = type("Recorded", (), {"__call__": staticmethod(forward),
                                          "__getattr__": lambda self, name: getattr(model, name)})()
    return seen


def recorded_drafts(llm: LLM) -> list[list[list[int]]]:
    """The proposer's drafts, call after call, recorded from now on."""
    got: list[list[list[int]]] = []
    proposer = llm.engine.driver.proposer
    propose = proposer.propose

    def record(batch):
        drafts = propose(batch)
        got.append([list(t) for t in drafts.token_ids])
        return drafts

    proposer.propose = record
    return got


@pytest.mark.parametrize("spec", [None, "eagle3"])
def test_padded_eager_steps_give_the_same_tokens(tiny_checkpoint, tmp_path, spec):
    """Six prompts prefilled in one eager step and decoded (plain, and EAGLE-3, whose random head reads the
    target's hidden states of every computed row): the same tokens and the same drafts with and without padding,
    and the padded engine's forwards ran on bucketed row counts, some of them padded (verify steps of up to 24
    rows: the LM head's rows are padded too)."""
    folder = tiny_checkpoint("llama", num_hidden_layers=4, initializer_range=0.3)
    config = None
    if spec:
        head = write_eagle3_head(tmp_path / "head", 64, TINY_VOCAB, 96, seed=2)
        config = {"method": "eagle3", "model": str(head), "num_speculative_tokens": 3}
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    outs, drafts = {}, {}
    for padded in (False, True):
        llm = LLM(model=str(folder), attention_backend="torch", disable_log_stats=True, max_num_seqs=6,
                  speculative_config=config)
        llm.engine.runner.bucket_rows = padded
        seen = rows_seen(llm)
        drafts[padded] = recorded_drafts(llm) if spec else []
        outs[padded] = [list(o.outputs[0].token_ids) for o in llm.generate(PROMPTS, params, use_tqdm=False)]
        if padded:
            assert all(n == bucket(n) for n in seen) and any(n > SMALL for n in seen), seen
        else:
            assert any(n != bucket(n) for n in seen), seen  # the unpadded run had shapes to pad
        if spec:
            assert llm.engine.counters.spec.num_draft_tokens > 0
        assert llm.engine.blocks.num_free_blocks == llm.engine.blocks.num_usable_blocks
    assert outs[True] == outs[False] and drafts[True] == drafts[False]
