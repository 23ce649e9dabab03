"""SamplingParams, validated as vLLM users write them."""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tokenleap.structured.params import StructuredOutputsParams

# Keys some guides put on SamplingParams although speculation is an engine setting.
_SPECULATIVE_KEYS = {
    "speculative_model", "speculative_sampling", "speculative_ratio", "num_speculative_tokens",
    "speculative_config", "ngram_prompt_lookup_max", "ngram_prompt_lookup_min", "speculative_method",
}


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _speculative_hint(data: dict[str, Any]) -> str:
    cfg: dict[str, Any] = {}
    model = data.get("speculative_model") or data.get("speculative_method")
    if isinstance(model, str) and model.strip("[]").lower() in {"ngram", "suffix", "eagle", "eagle3"}:
        cfg["method"] = model.strip("[]").lower()
    elif model:
        cfg.update(method="draft_model", model=model)
    else:
        cfg["method"] = "ngram"
    if "num_speculative_tokens" in data:
        cfg["num_speculative_tokens"] = data["num_speculative_tokens"]
    elif _is_count(data.get("speculative_ratio")):  # drafts per verify step, as some guides name it
        cfg["num_speculative_tokens"] = data["speculative_ratio"]
    if "ngram_prompt_lookup_max" in data:
        cfg["prompt_lookup_max"] = data["ngram_prompt_lookup_max"]
    if "ngram_prompt_lookup_min" in data:
        cfg["prompt_lookup_min"] = data["ngram_prompt_lookup_min"]
    keys = sorted(k for k in data if k in _SPECULATIVE_KEYS)
    return (
        f"SamplingParams got speculative-decoding key(s) {keys}, but speculation is configured once on "
        f"the engine, not per request, and it never changes the output distribution (so there is no "
        f"'speculative_sampling' switch). Use: LLM(model=..., speculative_config={cfg!r})"
    )


class SamplingParams(BaseModel):
    """How to sample one request. ``temperature=0`` is greedy."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    n: int = Field(1, ge=1, description="number of completions for the prompt")
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=-1, description="0 or -1 disables top-k")
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(1.0, gt=0.0)
    seed: int | None = None
    max_tokens: int | None = Field(16, ge=1, description="None: up to max_model_len")
    min_tokens: int = Field(0, ge=0)
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    logprobs: int | None = Field(None, ge=0)
    skip_special_tokens: bool = True
    # Constraints on the next token, applied at every position (drafts verified included); checked against the
    # model's vocabulary / compiled with its tokenizer when the request is added.
    logit_bias: dict[int, float] | None = None  # token id -> added to its logit
    allowed_token_ids: list[int] | None = None  # only these may be sampled
    bad_words: list[str] | None = None  # never generated (the last token of each is banned after the rest)
    structured_outputs: StructuredOutputsParams | None = None

    @field_validator("structured_outputs", mode="before")
    @classmethod
    def _structured_from_dict(cls, value: Any) -> Any:
        return StructuredOutputsParams.from_dict(value) if isinstance(value, dict) else value

    @field_validator("logit_bias")
    @classmethod
    def _finite_bias(cls, value: dict[int, float] | None) -> dict[int, float] | None:
        bad = {t: b for t, b in (value or {}).items() if not math.isfinite(b)}
        if bad:
            raise ValueError(f"logit_bias has non-finite bias(es) {bad}; biases must be finite numbers")
        return value

    @field_validator("allowed_token_ids")
    @classmethod
    def _non_empty_allowed(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and not value:
            raise ValueError("allowed_token_ids=[] allows no token; give at least one id, or None for all")
        return value

    @field_validator("bad_words")
    @classmethod
    def _non_empty_words(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and any(not w for w in value):
            raise ValueError(f"bad_words={value!r}: bad words must be non-empty strings")
        return value

    @model_validator(mode="before")
    @classmethod
    def _reject_speculative_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and _SPECULATIVE_KEYS & set(data):
            raise ValueError(_speculative_hint(data))
        if isinstance(data, dict) and "guided_decoding" in data:
            raise ValueError(
                "guided_decoding is vLLM's old name: use structured_outputs, e.g. "
                "SamplingParams(structured_outputs={'json': schema}) or {'regex': ...}, {'choice': [...]}, "
                "{'grammar': ...}, {'json_object': True}"
            )
        return data

    @model_validator(mode="after")
    def _check_relations(self) -> SamplingParams:
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(
                f"min_tokens={self.min_tokens} must be <= max_tokens={self.max_tokens}"
            )
        if isinstance(self.stop, list) and any(not s for s in self.stop) or self.stop == "":
            raise ValueError(f"stop={self.stop!r}: stop strings must be non-empty")
        if self.structured_outputs is not None and (self.ignore_eos or self.min_tokens):
            raise ValueError(
                f"structured_outputs with ignore_eos={self.ignore_eos} / min_tokens={self.min_tokens}: the grammar "
                f"decides where the output ends (it allows only the end-of-sequence token once complete), so it "
                f"cannot be combined with ignore_eos=True or min_tokens > 0"
            )
        return self

    @property
    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def effective_top_k(self) -> int:
        return 0 if self.top_k in (0, -1) else self.top_k

    @property
    def has_constraints(self) -> bool:
        """Anything that changes the logits besides penalties and min_tokens (never plain greedy)."""
        return bool(self.logit_bias or self.allowed_token_ids or self.bad_words or self.structured_outputs)

    @property
    def has_penalties(self) -> bool:
        return self.presence_penalty != 0 or self.frequency_penalty != 0 or self.repetition_penalty != 1.0
