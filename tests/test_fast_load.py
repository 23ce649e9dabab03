"""Fast loading: our GGUF reader against gguf's own, and the cached GGUF tokenizer against a fresh conversion."""

from __future__ import annotations

import os

import numpy as np
import pytest
from helpers.tiny_gguf import write_tiny_gguf
from helpers.tiny_models import make_tiny_model
from tokenleap.model import gguf_loader, tokenizer_cache
from tokenleap.model.gguf_file import GGUFFile

TEXTS = [
    "Hello world!", "  two  spaces\n\ttab ~ zebra 123", "<|im_start|>user\nhi<|im_end|>", "naïve café",
    "def f(x):\n    return x + 1  # 2024 🙂", "", " leading space", "trailing space ", "a,b;c. (d) [e] {f}",
    "Ünïcödé ∑ 漢字 かな 한국어", "<|endoftext|> mid <|im_end|>", "\n\n\n", "x" * 300,
]
CHATS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"}],
]


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    return write_tiny_gguf(make_tiny_model("llama"), tmp_path_factory.mktemp("gguf") / "tiny.gguf", "Q8_0")


def test_reader_equals_gguf_reader(tiny_gguf):
    from gguf import GGUFReader

    ours, theirs = GGUFFile(tiny_gguf), GGUFReader(str(tiny_gguf))
    keys = {k for k in theirs.fields if not k.startswith("GGUF.")}
    assert set(ours.metadata) == keys
    for key in keys:
        want, got = theirs.fields[key].contents(), ours.metadata[key]
        if isinstance(want, float):
            assert np.float32(got) == np.float32(want), key
        else:
            assert got == want, key
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    for mine, ref in zip(ours.tensors, theirs.tensors, strict=True):
        assert mine.shape == tuple(int(d) for d in reversed(ref.shape)) and mine.tensor_type == ref.tensor_type
        assert np.array_equal(mine.data.reshape(-1), np.asarray(ref.data).view(np.uint8).reshape(-1)), mine.name


def test_reader_rejects_other_files(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"NOPE" + bytes(20))
    with pytest.raises(ValueError, match="is not a GGUF v2/v3 file"):
        GGUFFile(bad)


def assert_same_tokenizer(got, want):
    assert got.backend_tokenizer.to_str() == want.backend_tokenizer.to_str()
    for attr in ("bos_token", "eos_token", "pad_token", "unk_token", "all_special_ids", "chat_template"):
        assert getattr(got, attr) == getattr(want, attr), attr
    for text in TEXTS:
        for special in (True, False):
            ids = want.encode(text, add_special_tokens=special)
            assert got.encode(text, add_special_tokens=special) == ids, text
            for skip in (True, False):
                assert got.decode(ids, skip_special_tokens=skip) == want.decode(ids, skip_special_tokens=skip)
    for chat in CHATS:
        for gen in (True, False):
            assert got.apply_chat_template(chat, tokenize=False, add_generation_prompt=gen) == \
                want.apply_chat_template(chat, tokenize=False, add_generation_prompt=gen)


def test_tokenizer_cache_round_trip(tiny_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENLEAP_CACHE", str(tmp_path / "cache"))
    reader = GGUFFile(tiny_gguf)
    fresh = gguf_loader._convert_tokenizer(tiny_gguf, reader)
    calls = []

    def convert():
        calls.append(1)
        return gguf_loader._convert_tokenizer(tiny_gguf, reader)

    first = tokenizer_cache.cached_tokenizer(tiny_gguf, convert)
    folder = tokenizer_cache.cache_folder(tiny_gguf)
    assert calls == [1] and (folder / "tokenizer.json").is_file() and folder.parent == tmp_path / "cache/tokenizers"
    second = tokenizer_cache.cached_tokenizer(tiny_gguf, convert)
    assert calls == [1], "the second load must come from the cache"
    assert_same_tokenizer(first, fresh)
    assert_same_tokenizer(second, fresh)
    # a damaged entry is converted again; a changed file gets another key
    (folder / "tokenizer.json").write_text("{not json")
    assert_same_tokenizer(tokenizer_cache.cached_tokenizer(tiny_gguf, convert), fresh)
    assert calls == [1, 1]
    st = tiny_gguf.stat()
    os.utime(tiny_gguf, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert tokenizer_cache.cache_folder(tiny_gguf) != folder


def test_bpe_tokenizer_does_not_warn_on_decode(tiny_gguf, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TOKENLEAP_CACHE", str(tmp_path / "cache"))
    tok = gguf_loader.gguf_tokenizer(tiny_gguf, GGUFFile(tiny_gguf))
    assert tok.clean_up_tokenization_spaces is False
    with caplog.at_level("WARNING"):
        tok.decode(tok.encode("a , b ."))
    assert "clean_up_tokenization_spaces" not in caplog.text


@pytest.mark.slow
def test_smollm2_cached_tokenizer_is_token_identical(smollm2_path, tmp_path, monkeypatch):
    """The cached SmolLM2 tokenizer against transformers' own conversion of the GGUF, as loaded before caching."""
    monkeypatch.setenv("TOKENLEAP_CACHE", str(tmp_path / "cache"))
    reader = GGUFFile(smollm2_path)
    fresh = gguf_loader._convert_tokenizer(smollm2_path, reader)
    tokenizer_cache.cached_tokenizer(smollm2_path, lambda: fresh)  # saved
    cached = gguf_loader.gguf_tokenizer(smollm2_path, reader)  # loaded from the folder
    assert_same_tokenizer(cached, fresh)


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])  # qwen2: attention bias, tied embeddings
def test_uninitialized_model_after_loading_equals_initialized(model_type, tmp_path):
    """Skipping the random init is safe only if loading writes every parameter and buffer."""
    import torch
    from helpers.tiny_models import make_tiny_checkpoint
    from tokenleap.kernels.ops import layer_ops
    from tokenleap.model.llama import LlamaForCausalLM
    from tokenleap.model.loader import load_checkpoint

    ckpt = load_checkpoint(make_tiny_checkpoint(tmp_path, model_type))
    ops = layer_ops("torch")
    ref = LlamaForCausalLM(ckpt.arch, 128, ops)
    ref.load_hf_weights(ckpt.weights)
    fast = LlamaForCausalLM.uninitialized(ckpt.arch, 128, ops, torch.device("cpu"), torch.float32)
    fast.load_hf_weights(ckpt.weights)
    want, got = ref.state_dict(), fast.state_dict()
    assert list(got) == list(want)
    for name, tensor in want.items():
        assert torch.equal(got[name], tensor), name
    assert torch.equal(fast.cos_sin_cache, ref.cos_sin_cache) and fast.cos_sin_cache.device.type == "cpu"
