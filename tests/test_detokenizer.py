"""The decode function the engine uses gives exactly the tokenizer's own ``decode``, and incremental
detokenization rebuilds the text of the whole output, multi-byte characters split over tokens included."""

from __future__ import annotations

import random

import pytest
from tokenleap.engine.detokenizer import (
    _cleans_up,
    append_token_text,
    append_tokens_text,
    init_offsets,
    text_decoder,
)
from tokenleap.engine.request import Request
from tokenleap.sampling_params import SamplingParams


def _random_ids(tokenizer, rng, n):
    vocab = len(tokenizer)
    special = list(tokenizer.all_special_ids)
    return [rng.choice(special) if rng.random() < 0.1 else rng.randrange(vocab) for _ in range(n)]


@pytest.fixture(scope="module")
def tokenizers(smollm2_llm, tiny_checkpoint):
    from transformers import AutoTokenizer

    return {"smollm2": smollm2_llm.get_tokenizer(), "tiny": AutoTokenizer.from_pretrained(tiny_checkpoint("llama"))}


@pytest.mark.parametrize("name", ["smollm2", "tiny"])
def test_text_decoder_equals_tokenizer_decode(tokenizers, name):
    tok = tokenizers[name]
    assert not _cleans_up(tok)  # so the engine decodes through the Rust backend directly
    decode = text_decoder(tok)
    rng = random.Random(0)
    for n in (1, 2, 5, 40):
        for _ in range(50):
            ids = _random_ids(tok, rng, n)
            for skip in (False, True):
                assert decode(ids, skip) == tok.decode(ids, skip_special_tokens=skip), (ids, skip)


def test_text_decoder_falls_back_when_decode_cleans_up(tokenizers):
    """A tokenizer whose decode post-processes the text keeps transformers' decode."""

    class CleaningUp:
        clean_up_tokenization_spaces = True
        _tokenizer = tokenizers["tiny"]._tokenizer

        def decode(self, ids, skip_special_tokens=False):
            return "cleaned:" + str(list(ids))

    assert text_decoder(CleaningUp())([5, 6], False) == "cleaned:[5, 6]"
    assert text_decoder(None) is None


def test_incremental_text_equals_whole_decode(tokenizers):
    tok = tokenizers["smollm2"]
    decode = text_decoder(tok)
    prompt = tok.encode("Grüße 👋 from")
    output = tok.encode(" 日本語のテキスト, émojis 🎉🎉 and plain words.", add_special_tokens=False)
    req = Request("r", prompt, SamplingParams(max_tokens=100), 0, 0, 100, frozenset())
    init_offsets(req)
    pieces = []
    for t in output:
        req.all_token_ids.append(t)
        pieces.append(append_token_text(req, decode, True))
    assert "".join(pieces) == tok.decode(output)
    assert any(p == "" for p in pieces)  # some tokens ended inside a character and waited for the next


@pytest.mark.parametrize("name", ["smollm2", "tiny"])
def test_text_of_many_tokens_at_once_equals_token_by_token(tokenizers, name):
    """A verify step emits several tokens whose text is made in one go (``end``): the same text as one by one,
    wherever the chunks split (multi-byte characters and special tokens included)."""
    tok = tokenizers[name]
    decode = text_decoder(tok)
    rng = random.Random(1)
    prompt = tok.encode("Grüße 👋 from")
    output = tok.encode(" 日本語のテキスト, émojis 🎉🎉 and plain words.", add_special_tokens=False)
    for trial in range(60):
        if trial % 2:  # with bytes that form no valid character, anywhere
            cut = rng.randrange(len(output))
            ids = output[:cut] + _random_ids(tok, rng, 8) + output[cut:] + _random_ids(tok, rng, 8)
        else:
            ids = output
        skip = trial % 3 != 0
        texts = []
        for chunked in (False, True):
            req = Request("r", prompt, SamplingParams(max_tokens=100), 0, 0, 100, frozenset())
            init_offsets(req)
            text, i = "", 0
            while i < len(ids):
                n = rng.randint(1, 9) if chunked else 1
                req.all_token_ids.extend(ids[i : i + n])
                i += n
                end = len(req.all_token_ids)
                text += append_tokens_text(req, decode, skip, end) if chunked else append_token_text(req, decode, skip)
            texts.append(text)
        assert texts[0] == texts[1], (ids, skip)
