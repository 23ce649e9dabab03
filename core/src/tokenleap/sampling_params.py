"""SamplingParams, validated as vLLM users write them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

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

    @model_validator(mode="before")
    @classmethod
    def _reject_speculative_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and _SPECULATIVE_KEYS & set(data):
            raise ValueError(_speculative_hint(data))
        return data

    @model_validator(mode="after")
    def _check_relations(self) -> SamplingParams:
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(
                f"min_tokens={self.min_tokens} must be <= max_tokens={self.max_tokens}"
            )
        if isinstance(self.stop, list) and any(not s for s in self.stop) or self.stop == "":
            raise ValueError(f"stop={self.stop!r}: stop strings must be non-empty")
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
    def has_penalties(self) -> bool:
        return self.presence_penalty != 0 or self.frequency_penalty != 0 or self.repetition_penalty != 1.0
