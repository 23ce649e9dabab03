"""Prompt types accepted by ``LLM.generate`` and their validation (before any work starts)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypedDict


class TextPrompt(TypedDict, total=False):
    prompt: str


class TokensPrompt(TypedDict, total=False):
    prompt_token_ids: list[int]


PromptType = str | TextPrompt | TokensPrompt


@dataclass
class ParsedPrompt:
    text: str | None
    token_ids: list[int]


def as_prompt_list(prompts: PromptType | Sequence[PromptType]) -> list[PromptType]:
    if isinstance(prompts, (str, dict)):
        return [prompts]
    if isinstance(prompts, Sequence) and prompts and all(isinstance(t, int) for t in prompts):
        raise TypeError(
            "prompts is a flat list of ints; pass token ids as {'prompt_token_ids': [...]} (a TokensPrompt)"
        )
    return list(prompts)


def parse_prompt(index: int, prompt: Any, tokenizer, tokenization_kwargs: dict | None) -> ParsedPrompt:
    where = f"prompts[{index}]"
    if isinstance(prompt, str):
        text = prompt
    elif isinstance(prompt, dict) and "prompt_token_ids" in prompt:
        ids = prompt["prompt_token_ids"]
        if not isinstance(ids, (list, tuple)) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            raise TypeError(f"{where}.prompt_token_ids must be a list of ints, got {type(ids).__name__}")
        return ParsedPrompt(prompt.get("prompt"), list(ids))
    elif isinstance(prompt, dict) and "prompt" in prompt:
        text = prompt["prompt"]
        if not isinstance(text, str):
            raise TypeError(f"{where}.prompt must be a str, got {type(text).__name__}")
    else:
        raise TypeError(
            f"{where}={prompt!r:.80}: expected a str, {{'prompt': str}} or {{'prompt_token_ids': [int, ...]}}"
        )
    if tokenizer is None:
        raise ValueError(f"{where} is text but this model has no tokenizer; pass {{'prompt_token_ids': [...]}}")
    kwargs = dict(tokenization_kwargs or {})
    ids = tokenizer.encode(text, **kwargs) if text else []
    return ParsedPrompt(text, list(ids))
