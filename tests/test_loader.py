"""Checkpoint loading: safetensors folders, GGUF files (tiny ones + real SmolLM2). Pull: test_model_hub.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers.malicious_pickle import RunsCode
from helpers.tiny_gguf import llamacpp_permute, write_tiny_gguf
from helpers.tiny_models import (
    EOS_ID,
    LLAMA3_ROPE,
    make_tiny_checkpoint,
    make_tiny_model,
    make_tiny_tokenizer,
    tiny_state_dict,
)
from safetensors.torch import load_file, save_file
from tokenleap.model.gguf_loader import unpermute_rope_rows
from tokenleap.model.loader import load_checkpoint

TEXTS = ["Hello world!", "  two  spaces\n\ttab ~ zebra 123", "<|im_start|>user\nhi<|im_end|>", "naïve café"]


def assert_same_weights(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], atol: float = 0.0):
    assert sorted(got) == sorted(want)
    for name, w in want.items():
        assert got[name].shape == w.shape, name
        assert torch.allclose(got[name].float(), w.float(), rtol=0, atol=atol), name


# ---- Hugging Face safetensors folders -------------------------------------------------------------


@pytest.mark.parametrize(
    "model_type, overrides",
    [("llama", {}), ("llama", {"rope_scaling": LLAMA3_ROPE}), ("mistral", {}), ("qwen2", {})],
    ids=["llama", "llama3-rope", "mistral", "qwen2-tied"],
)
def test_hf_folder_equals_transformers_state_dict(tmp_path, model_type, overrides):
    folder = make_tiny_checkpoint(tmp_path, model_type, **overrides)
    ckpt = load_checkpoint(folder)
    assert_same_weights(ckpt.weights, tiny_state_dict(folder))
    assert ckpt.torch_dtype == torch.float32 and ckpt.source == str(folder)
    assert ckpt.arch.model_type == model_type and ckpt.arch.num_key_value_heads == 2
    assert ckpt.arch.tie_word_embeddings == (model_type == "qwen2")
    assert ckpt.arch.attention_bias == (model_type == "qwen2")
    assert ckpt.arch.rope_type == ("llama3" if overrides else "default")
    assert ckpt.tokenizer.eos_token_id == EOS_ID and ckpt.arch.eos_token_ids == (EOS_ID,)
    for text in TEXTS:
        assert ckpt.tokenizer.decode(ckpt.tokenizer.encode(text)) == text


@pytest.mark.parametrize("keep_index", [True, False])
def test_sharded_safetensors(tmp_path, keep_index):
    folder = make_tiny_checkpoint(tmp_path, "llama", max_shard_size="40KB")
    assert len(list(folder.glob("*.safetensors"))) > 1
    want = tiny_state_dict(folder)
    if not keep_index:
        (folder / "model.safetensors.index.json").unlink()
    assert_same_weights(load_checkpoint(folder).weights, want)


@pytest.mark.parametrize(
    "dtype, want",
    [
        ("bfloat16", torch.bfloat16),
        ("float16", torch.float16),
        ("half", torch.float16),
        ("float", torch.float32),
        (torch.bfloat16, torch.bfloat16),
    ],
)
def test_dtype_conversion(tmp_path, dtype, want):
    folder = make_tiny_checkpoint(tmp_path, "qwen2")
    ckpt = load_checkpoint(folder, dtype=dtype)
    assert ckpt.torch_dtype == want
    assert all(t.dtype == want for t in ckpt.weights.values())
    assert_same_weights(ckpt.weights, {k: v.to(want) for k, v in tiny_state_dict(folder).items()})


def test_auto_dtype_follows_device(tmp_path):
    folder = make_tiny_checkpoint(tmp_path, "llama", save_dtype=torch.bfloat16)
    assert load_checkpoint(folder).torch_dtype == torch.float32  # CPU: always float32
    on_cuda = load_checkpoint(folder, device="cuda")  # tensors stay on CPU; only the dtype follows
    assert on_cuda.torch_dtype == torch.bfloat16
    assert all(t.dtype == torch.bfloat16 and t.device.type == "cpu" for t in on_cuda.weights.values())


def test_bad_dtype_names_field_value_and_choices(tmp_path):
    folder = make_tiny_checkpoint(tmp_path, "llama")
    with pytest.raises(ValueError) as err:
        load_checkpoint(folder, dtype="int8")
    assert "dtype" in str(err.value) and "'int8'" in str(err.value) and "bfloat16" in str(err.value)


def test_missing_path(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        load_checkpoint(missing)


def test_pytorch_model_bin_loads_through_the_restricted_unpickler(tmp_path):
    folder = make_tiny_checkpoint(tmp_path, "llama")
    reference = load_checkpoint(folder)
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    loaded = load_checkpoint(folder)
    assert sorted(loaded.weights) == sorted(reference.weights)
    for name, tensor in reference.weights.items():
        assert torch.equal(loaded.weights[name], tensor), name
    with pytest.raises(ValueError) as err:  # a bare pickle file (no folder, no config) stays refused
        load_checkpoint(folder / "pytorch_model.bin")
    assert "arbitrary code" in str(err.value) and "safetensors" in str(err.value)


def test_pickle_with_code_is_refused_without_running_it(tmp_path):
    folder = make_tiny_checkpoint(tmp_path, "llama")
    state = dict(load_file(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    state["model.norm.weight"] = RunsCode(marker)
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(ValueError) as err:
        load_checkpoint(folder)
    assert not marker.exists()
    msg = str(err.value)
    assert "pytorch_model.bin" in msg and "weights_only=True" in msg and "arbitrary code" in msg


def test_missing_and_unexpected_tensors(tmp_path):
    folder = make_tiny_checkpoint(tmp_path, "llama")
    state = load_file(folder / "model.safetensors")
    gone = state.pop("model.layers.1.mlp.up_proj.weight")
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"lacks 1 tensor.*model\.layers\.1\.mlp\.up_proj\.weight"):
        load_checkpoint(folder)
    state["model.layers.1.mlp.up_proj.weight"] = gone
    state["model.layers.0.mlp.up_proj.bias"] = torch.zeros(128)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"does not use.*mlp\.up_proj\.bias"):
        load_checkpoint(folder)


def test_unsupported_architecture_and_odd_folders(tmp_path):
    folder = make_tiny_checkpoint(tmp_path, "llama")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    with pytest.raises(ValueError, match="model_type='gpt2'"):
        load_checkpoint(folder)
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_checkpoint(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no \\*.safetensors"):
        load_checkpoint(empty)
    (empty / "a.gguf").write_bytes(b"")
    (empty / "b.gguf").write_bytes(b"")
    with pytest.raises(ValueError, match="2 .gguf files"):
        load_checkpoint(empty)


# ---- GGUF: tiny files written the way llama.cpp's converter writes them ---------------------------


def test_unpermute_inverts_llamacpp_permutation():
    n_heads, head_dim = 3, 8
    w = np.arange(n_heads * head_dim * 2, dtype=np.float32).reshape(n_heads * head_dim, 2)  # [rows, in]
    permuted = llamacpp_permute(w, n_heads)
    # llama.cpp puts HF rows j and j + head_dim/2 (a rotate-half pair) next to each other
    assert np.array_equal(permuted[0], w[0]) and np.array_equal(permuted[1], w[head_dim // 2])
    assert np.array_equal(permuted[head_dim + 1], w[head_dim + head_dim // 2])
    assert np.array_equal(unpermute_rope_rows(permuted, n_heads), w)


def test_llama3_rope_recovered_from_rope_freqs():
    """llama.cpp stores Llama-3.1 rope scaling as per-pair divisors (`rope_freqs`); check we read
    them back to the config transformers computes its inverse frequencies from."""
    from tokenleap.model.gguf_loader import _llama3_rope
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = {**LLAMA3_ROPE, "original_max_position_embeddings": 8192, "rope_theta": 500000.0}
    cfg = LlamaConfig(hidden_size=512, num_attention_heads=4, rope_parameters=rope)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg)  # [head_dim/2]
    base = 1.0 / 500000.0 ** (torch.arange(0, 128, 2, dtype=torch.float64) / 128)
    freqs = (base / scaled.double()).float().numpy()
    got = _llama3_rope(freqs, head_dim=128, theta=500000.0, orig_ctx=8192)
    assert got == {k: v for k, v in rope.items() if k != "rope_theta"} | {"factor": pytest.approx(8.0)}
    with pytest.raises(ValueError, match="rope_freqs"):
        _llama3_rope(freqs * 1.5, head_dim=128, theta=500000.0, orig_ctx=8192)


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
@pytest.mark.parametrize("qtype, atol", [("F32", 0.0), ("F16", 1e-4), ("Q8_0", 1e-3)])
def test_tiny_gguf_equals_original_weights(tmp_path, model_type, qtype, atol):
    model = make_tiny_model(model_type, tie_word_embeddings=model_type == "qwen2")
    path = write_tiny_gguf(model, tmp_path / f"tiny-{model_type}.gguf", qtype)
    ckpt = load_checkpoint(path)
    tied = model_type == "qwen2"
    want = {k: v for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
    assert_same_weights(ckpt.weights, want, atol=atol)
    assert ckpt.arch.model_type == model_type and ckpt.arch.rms_norm_eps == 1e-6
    assert ckpt.arch.num_attention_heads == 4 and ckpt.arch.num_key_value_heads == 2
    hf_tok, tok = make_tiny_tokenizer(), ckpt.tokenizer
    for text in TEXTS:
        assert tok.encode(text, add_special_tokens=False) == hf_tok.encode(text, add_special_tokens=False)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, EOS_ID, 0)
    assert tok.chat_template == hf_tok.chat_template
    # a folder holding one .gguf loads that file
    assert load_checkpoint(tmp_path).source == str(path)


# ---- GGUF: the real SmolLM2-135M-Instruct Q4_1 ----------------------------------------------------


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    return load_checkpoint(smollm2_path)


@pytest.fixture(scope="module")
def smollm2_transformers(smollm2_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": smollm2_path.name}
    model = AutoModelForCausalLM.from_pretrained(str(smollm2_path.parent), dtype=torch.float32, **kwargs)
    return model.eval(), AutoTokenizer.from_pretrained(str(smollm2_path.parent), **kwargs)


@pytest.mark.slow
def test_smollm2_weights_equal_transformers(smollm2, smollm2_transformers):
    model, _ = smollm2_transformers
    want = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied
    assert smollm2.arch.tie_word_embeddings and smollm2.arch.num_hidden_layers == 30
    assert (smollm2.arch.num_attention_heads, smollm2.arch.num_key_value_heads) == (9, 3)
    assert smollm2.arch.rope_theta == 100000.0 and smollm2.arch.rms_norm_eps == 1e-5
    assert_same_weights(smollm2.weights, want, atol=1e-6)


@pytest.mark.slow
def test_smollm2_tokenizer_and_chat_template(smollm2, smollm2_transformers):
    _, hf_tok = smollm2_transformers
    tok = smollm2.tokenizer
    for text in [*TEXTS, "def f(x):\n    return x + 1  # 2024 🙂"]:
        ids = tok.encode(text, add_special_tokens=False)
        assert ids == hf_tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
    # transformers 5.17's GGUF converter sets eos to the bos token; ours follows the GGUF metadata
    assert (tok.eos_token, tok.eos_token_id, tok.bos_token_id) == ("<|im_end|>", 2, 1)
    assert smollm2.arch.eos_token_ids == (2,)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert "<|im_start|>user\nhi<|im_end|>" in prompt and prompt.endswith("<|im_start|>assistant\n")


@pytest.mark.slow
def test_smollm2_unpermuted_weights_answer_sensibly(smollm2):
    """Independent of transformers' GGUF code: with q/k rows in the wrong order the model would babble."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = {k: v for k, v in smollm2.hf_config.items() if k != "architectures"}
    model = LlamaForCausalLM(LlamaConfig(**cfg)).eval()
    model.load_state_dict(smollm2.weights, strict=False)  # lm_head tied to embed_tokens
    tok = smollm2.tokenizer
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1] :])
