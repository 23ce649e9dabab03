"""Greedy parity with transformers: tokenleap's batched engine emits exactly the tokens that
transformers' own ``generate`` emits for each prompt alone, on the same weights (float32, CPU).

References are computed here, by transformers, never hard-coded: the real SmolLM2-135M-Instruct GGUF
(dequantized by transformers' own GGUF reader) and tiny random-weight Llama / Llama-3.1-rope /
Mistral (+ sliding window) / Qwen2 checkpoints written by transformers.
"""

from __future__ import annotations

import pytest
import torch
from helpers.tiny_models import LLAMA3_ROPE
from tokenleap import SamplingParams

pytestmark = pytest.mark.usefixtures("torch_one_thread")

NEW_TOKENS = 64

CHATS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain to a child why the sky is blue, in two sentences.",
    "List three prime numbers greater than 10 and say why they are prime.",
    "How do I boil an egg?",
    "Translate 'good morning, my friend' into Spanish and German.",
]

TINY_TEXTS = [
    "Hello world!",
    "The quick brown fox jumps over the lazy dog. " * 3,
    "def add(a, b):\n    return a + b\n",
    "Paged attention stores keys and values in fixed-size blocks; the scheduler batches requests. " * 2,
    "the cat",
    "Speculative decoding drafts tokens and the target model verifies them in one step.",
]


@torch.no_grad()
def hf_greedy(
    model, prompts: list[list[int]], new_tokens: int = NEW_TOKENS, pad_id: int = 0
) -> list[list[int]]:
    """transformers greedy decoding (``generate``, one left-padded batch) for exactly ``new_tokens``
    tokens per prompt (EOS ignored)."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = model.generate(
        ids,
        attention_mask=mask,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=pad_id,
        temperature=None,
        top_p=None,
        top_k=None,
    )
    return out[:, width:].tolist()


def first_mismatch(a: list[int], b: list[int]) -> int | None:
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
        None if len(a) == len(b) else min(len(a), len(b)),
    )


GREEDY = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)


# ---- SmolLM2-135M-Instruct (real GGUF) --------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2_hf_tokenizer(smollm2_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm2_path.parent), gguf_file=smollm2_path.name)


@pytest.mark.slow
def test_smollm2_chat_batch_greedy_equals_transformers(smollm2_llm, smollm2_hf, smollm2_hf_tokenizer):
    conversations = [[{"role": "user", "content": c}] for c in CHATS]
    outs = smollm2_llm.chat(conversations, GREEDY, use_tqdm=False)  # one batch of 6
    assert len(outs) == len(CHATS)
    tok = smollm2_llm.get_tokenizer()
    want_prompts = []
    for conv in conversations:
        ids = smollm2_hf_tokenizer.apply_chat_template(conv, add_generation_prompt=True, tokenize=True)
        want_prompts.append(list(ids["input_ids"] if hasattr(ids, "keys") else ids))
    wants = hf_greedy(smollm2_hf, want_prompts, pad_id=smollm2_hf_tokenizer.pad_token_id or 0)
    for conv, out, want_prompt, want in zip(conversations, outs, want_prompts, wants, strict=True):
        assert out.prompt_token_ids == want_prompt  # same chat template, same tokenizer
        got = out.outputs[0].token_ids
        assert got == want, f"{conv[0]['content']!r}: first difference at token {first_mismatch(got, want)}"
        assert out.outputs[0].finish_reason == "length" and out.finished
        # the incrementally detokenized text is the text of the whole output
        assert out.outputs[0].text == tok.decode(got, skip_special_tokens=True)
    # the model is not degenerate: the six answers differ
    assert len({tuple(o.outputs[0].token_ids) for o in outs}) == len(CHATS)


@pytest.mark.slow
def test_smollm2_stops_at_eos_like_transformers(smollm2_llm, smollm2_hf):
    """Without ignore_eos the engine stops where transformers stops (EOS included in token_ids)."""
    tok = smollm2_llm.get_tokenizer()
    conv = [{"role": "user", "content": "Say just the word 'yes'."}]
    prompt = tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=True)
    prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
    out = smollm2_llm.generate(
        {"prompt_token_ids": prompt}, SamplingParams(temperature=0, max_tokens=48), use_tqdm=False
    )[0].outputs[0]
    ids = torch.tensor([prompt])
    with torch.no_grad():
        ref = smollm2_hf.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=48,
            do_sample=False,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.eos_token_id,
            temperature=None,
            top_p=None,
            top_k=None,
        )[0, len(prompt) :].tolist()
    assert out.token_ids == ref
    assert ref[-1] == tok.eos_token_id and len(ref) < 48  # the reference did stop at EOS
    assert out.finish_reason == "stop" and out.stop_reason is None
    assert tok.eos_token_id in out.token_ids and "<|im_end|>" not in out.text


# ---- tiny random-weight checkpoints -----------------------------------------------------------------

TINY_VARIANTS = {
    "llama": ("llama", {}),
    "llama3-rope": ("llama", {"rope_scaling": LLAMA3_ROPE}),
    "mistral": ("mistral", {}),
    "mistral-sliding-window": ("mistral", {"sliding_window": 24}),
    "qwen2": ("qwen2", {}),
}


@pytest.mark.parametrize("variant", list(TINY_VARIANTS))
def test_tiny_batch_greedy_equals_transformers(variant, tiny_checkpoint, tiny_hf):
    from tokenleap import LLM

    model_type, overrides = TINY_VARIANTS[variant]
    folder = tiny_checkpoint(model_type, **overrides)
    hf = tiny_hf(model_type, **overrides)
    llm = LLM(model=str(folder), disable_log_stats=True, num_gpu_blocks_override=128, block_size=16)
    outs = llm.generate(TINY_TEXTS, GREEDY, use_tqdm=False)
    tok = llm.get_tokenizer()
    wants = hf_greedy(hf, [o.prompt_token_ids for o in outs])
    distinct = set()
    for text, out, want in zip(TINY_TEXTS, outs, wants, strict=True):
        assert out.prompt_token_ids == tok.encode(text)
        got = out.outputs[0].token_ids
        assert got == want, f"{variant} {text[:20]!r}: first difference at token {first_mismatch(got, want)}"
        assert len(got) == NEW_TOKENS and out.outputs[0].finish_reason == "length"
        distinct.add(tuple(got))
    assert len(distinct) == len(TINY_TEXTS)
    if overrides.get("sliding_window") or overrides.get("rope_scaling"):
        # the variant's feature matters at these lengths: positions go past the window / original context
        assert max(len(o.prompt_token_ids) for o in outs) + NEW_TOKENS > 64
