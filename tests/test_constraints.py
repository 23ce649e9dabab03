"""The per-request constraint rows: bitmask packing and application, logit_bias, bad words looking back into
the drafts, the grammar's masks along a draft (equal to stepping the matcher token by token, refused drafts
end it, the matcher ends where it started), and compile caching."""

from __future__ import annotations

import pytest
import torch
from tokenleap import SamplingParams
from tokenleap.sample.logits import add_bias, apply_bitmask, unpack_bitmask
from tokenleap.structured import grammar
from tokenleap.structured.constraints import StepRows, for_request, ids_bitmask


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoint):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_checkpoint("llama")))


def test_bitmask_round_trip_and_application():
    vocab = 77
    ids = [0, 5, 31, 32, 63, 64, 76]
    mask = torch.from_numpy(ids_bitmask(ids, vocab))  # [3] int32
    assert mask.shape == (3,) and unpack_bitmask(mask[None], vocab)[0].nonzero()[:, 0].tolist() == ids
    logits = torch.randn(4, vocab)
    out = apply_bitmask(logits, torch.tensor([1, 3]), torch.stack([mask, torch.full_like(mask, -1)]))
    want = logits.clone()
    want[1, [t for t in range(vocab) if t not in ids]] = float("-inf")
    assert torch.equal(out, want)
    biased = add_bias(logits, torch.tensor([0, 0, 2]), torch.tensor([3, 3, 9]), torch.tensor([1.0, 0.5, -2.0]))
    want = logits.clone()
    want[0, 3] += 1.5
    want[2, 9] -= 2.0
    assert torch.allclose(biased, want)


class WordTokenizer:
    """Words map to fixed token sequences ("ab" -> [7, 8], "c" -> [9]); with a leading space to others."""

    table = {"ab": [7, 8], " ab": [4, 7, 8], "c": [9], " c": [10]}

    def encode(self, text, add_special_tokens=False):
        return self.table[text]


def test_bad_words_look_back_into_output_and_drafts():
    c = for_request(SamplingParams(bad_words=["ab", "c"]), WordTokenizer(), 32, [2])
    assert c.bad_words == [[7, 8], [4, 7, 8], [9], [10]]
    rows = StepRows()
    c.add_rows(rows, 10, [1, 7], [5, 7, 4])  # rows 10..13; contexts end in 7, 5, 7, 4
    banned = {r: sorted(t for rr, t in zip(rows.ban_rows, rows.ban_ids) if rr == r) for r in range(10, 14)}
    assert banned == {10: [8, 9, 10], 11: [9, 10], 12: [8, 9, 10], 13: [9, 10]}
    rows = StepRows()
    c.add_rows(rows, 0, [4, 7], [])  # " ab": 4 7 then 8
    assert sorted(rows.ban_ids) == [8, 9, 10]


def test_logit_bias_and_allowed_rows():
    c = for_request(SamplingParams(logit_bias={3: 1.5, 9: -2.0}, allowed_token_ids=[3, 4, 40]), None, 64, [2])
    rows = StepRows()
    c.add_rows(rows, 2, [1], [3, 4])
    assert rows.bias_rows == [2, 2, 3, 3, 4, 4] and rows.bias_ids == [3, 9] * 3 and rows.bias_values == [1.5, -2.0] * 3
    assert rows.mask_rows == [2, 3, 4]
    assert unpack_bitmask(rows.masks[0], 64).nonzero()[:, 1].tolist() == [3, 4, 40] * 3


def test_grammar_masks_along_drafts_equal_stepping(tokenizer):
    params = SamplingParams(structured_outputs={"regex": "(cat|dog) [a-z]{2,4}"})
    c = for_request(params, tokenizer, 320, [2])
    path = tokenizer.encode("cat sat", add_special_tokens=False)
    ref = for_request(params, tokenizer, 320, [2])
    want = []  # the mask at each prefix, by accepting tokens one at a time
    for t in path:
        rows = StepRows()
        ref.add_rows(rows, 0, [], [])
        want.append(rows.masks[0][0])
        ref.accept([t])
    rows = StepRows()
    c.add_rows(rows, 0, [], path)
    assert rows.mask_rows == list(range(len(path) + 1))
    for i in range(len(path)):
        assert torch.equal(rows.masks[0][i], want[i]), i
    # a refused draft: its row forbids it; the rows after it stay all-allowed (never used)
    bad = tokenizer.encode("7", add_special_tokens=False)[0]  # never allowed by the regex
    rows = StepRows()
    c.add_rows(rows, 0, [], [path[0], bad, path[1]])
    masks = rows.masks[0]
    assert torch.equal(masks[0], want[0]) and torch.equal(masks[1], want[1])
    assert not unpack_bitmask(masks[1:2], 320)[0, bad] and (masks[2:] == -1).all()
    # the matcher ended where it started: accepting the path token by token still works
    c.accept(path)
    rows, ref_rows = StepRows(), StepRows()
    c.add_rows(rows, 0, path, [])
    ref.add_rows(ref_rows, 0, path, [])
    assert torch.equal(rows.masks[0], ref_rows.masks[0])
    with pytest.raises(RuntimeError, match="refused emitted token"):
        c.accept([bad])


def test_compiled_once_per_constraint_and_tokenizer(tokenizer):
    from tokenleap.structured.params import StructuredOutputsParams

    schema = {"type": "object", "properties": {"a": {"enum": ["x", "y"]}}, "required": ["a"]}
    a = grammar.compile_constraint(StructuredOutputsParams(json=schema), tokenizer, 320)
    b = grammar.compile_constraint(StructuredOutputsParams(json=dict(schema)), tokenizer, 320)
    other = grammar.compile_constraint(StructuredOutputsParams(json=schema), tokenizer, 352)  # another vocab
    assert a is b and a is not other
    assert grammar.choice_ebnf(['say "hi"', "a\\b"]) == 'root ::= "say \\"hi\\"" | "a\\\\b"'
