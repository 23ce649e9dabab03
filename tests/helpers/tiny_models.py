"""Tiny random-weight Llama / Mistral / Qwen2 checkpoints written by transformers, for tests.

`make_tiny_checkpoint(tmp_path, "llama")` writes config.json + model.safetensors + a byte-level BPE
tokenizer (encodes any text, ChatML chat template, eos `<|im_end|>`) and returns the folder.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import torch

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0 (pad/unk), 1 (bos), 2 (eos)
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
TINY_VOCAB = 320  # the model's vocab_size; the tokenizer has <= TOKENIZER_VOCAB entries
TOKENIZER_VOCAB = 300
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Speculative decoding drafts tokens and the target model verifies them in one step.",
    "def add(a, b):\n    return a + b\n",
    "Hello world! How are you today? I am fine, thank you.",
    "the cat sat on the mat; the dog sat on the log.",
    "Paged attention stores keys and values in fixed-size blocks.",
]

TINY_DIMS: dict[str, Any] = dict(
    vocab_size=TINY_VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    bos_token_id=BOS_ID,
    eos_token_id=EOS_ID,
    pad_token_id=PAD_ID,
)
# Per-family defaults on top of TINY_DIMS (override anything through make_tiny_checkpoint kwargs).
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": dict(tie_word_embeddings=False),
    "mistral": dict(tie_word_embeddings=False, sliding_window=None),
    "qwen2": dict(tie_word_embeddings=True),
}
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}


@functools.lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    """A byte-level BPE trained on a few sentences (deterministic), serialized."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    return tok.to_str()


def make_tiny_tokenizer() -> Any:
    """A PreTrainedTokenizerFast: bos <|im_start|>, eos <|im_end|>, pad/unk <|endoftext|>."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        bos_token=SPECIAL_TOKENS[BOS_ID],
        eos_token=SPECIAL_TOKENS[EOS_ID],
        pad_token=SPECIAL_TOKENS[PAD_ID],
        unk_token=SPECIAL_TOKENS[PAD_ID],
        chat_template=CHAT_TEMPLATE,
    )


def tiny_config(model_type: str = "llama", **overrides: Any) -> Any:
    """The transformers config object for a tiny model of `model_type`."""
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    classes = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}
    if model_type not in classes:
        raise ValueError(f"model_type={model_type!r}; expected one of {sorted(classes)}")
    return classes[model_type](**{**TINY_DIMS, **FAMILY_DEFAULTS[model_type], **overrides})


def make_tiny_model(model_type: str = "llama", seed: int = 0, **overrides: Any) -> Any:
    """A float32 transformers *ForCausalLM with random weights (deterministic for a seed), eval mode."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(model_type, **overrides)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():  # init leaves norms at 1 and biases at 0: perturb so loading bugs show
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(torch.randn_like(p) * 0.1)
            elif name.endswith(".bias"):
                p.normal_(0.0, 0.02)
    return model


def make_tiny_checkpoint(
    tmp_path: str | Path,
    model_type: str = "llama",
    *,
    seed: int = 0,
    max_shard_size: str | int | None = None,
    save_dtype: torch.dtype | None = None,
    name: str | None = None,
    **overrides: Any,
) -> Path:
    """Write a tiny HF checkpoint folder (safetensors + tokenizer) under tmp_path; return the folder.

    overrides go to the transformers config (e.g. rope_scaling=LLAMA3_ROPE, tie_word_embeddings=True,
    num_hidden_layers=4). max_shard_size shards the safetensors (writes an index json). save_dtype
    stores the weights in that dtype (config.json records it).
    """
    folder = Path(tmp_path) / (name or f"tiny-{model_type}")
    model = make_tiny_model(model_type, seed=seed, **overrides)
    if save_dtype is not None:
        model = model.to(save_dtype)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size is not None else {}
    model.save_pretrained(folder, **kwargs)
    make_tiny_tokenizer().save_pretrained(folder)
    return folder


def tiny_state_dict(folder: str | Path) -> dict[str, torch.Tensor]:
    """The float32 state dict transformers itself loads from `folder` (tied lm_head left out)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if json.loads((Path(folder) / "config.json").read_text()).get("tie_word_embeddings"):
        sd.pop("lm_head.weight", None)
    return sd
