"""Engine settings as pydantic models: a wrong field or value fails with the field, the value and
what is allowed, before any work starts."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DType = Literal["auto", "float32", "bfloat16", "float16", "float", "half"]


class EngineConfig(BaseModel):
    """Everything ``LLM(...)`` accepts, as vLLM names it."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(min_length=1)
    tokenizer: str | None = None
    dtype: DType = "auto"
    seed: int = 0
    max_model_len: int | None = Field(None, ge=2)
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0)
    enforce_eager: bool = False
    async_scheduling: bool = Field(True, description="launch the next greedy decode step before reading this one")
    tensor_parallel_size: int = Field(1, ge=1)
    speculative_config: dict[str, Any] | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    load_format: Literal["auto", "safetensors", "gguf", "dummy"] = "auto"
    block_size: int = Field(16, ge=1, le=256)
    enable_prefix_caching: bool = True
    kv_cache_memory_bytes: int | None = Field(None, ge=1, description="KV cache size; default 1 GiB on CPU")
    num_gpu_blocks_override: int | None = Field(None, ge=2, description="exact number of KV blocks")
    max_num_batched_tokens: int | None = Field(None, ge=1)
    max_num_seqs: int = Field(64, ge=1)
    enable_chunked_prefill: bool = True
    scheduling_policy: Literal["fcfs", "priority"] = "fcfs"
    max_logprobs: int = Field(20, ge=0)
    disable_log_stats: bool = False
    log_stats_interval_s: float = Field(5.0, gt=0)
    attention_backend: Literal["auto", "torch", "triton", "cpu"] = "auto"
    # Weight-only quantization on the CPU (bfloat16 activations; docs/performance-log.md, issue 18): "int8" one
    # scale per output row, "int4" groups of 32 (a Q4_1 GGUF's own codes); the LM head int8 in both.
    quantization: Literal["int8", "int4"] | None = None
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _draft_tp(self) -> EngineConfig:
        draft_tp = (self.speculative_config or {}).get("draft_tensor_parallel_size")
        if draft_tp is not None and draft_tp not in (1, self.tensor_parallel_size):
            raise ValueError(
                f"speculative_config draft_tensor_parallel_size={draft_tp!r} must be 1 or the target's "
                f"tensor_parallel_size={self.tensor_parallel_size}"
            )
        return self

    @model_validator(mode="after")
    def _quantization(self) -> EngineConfig:
        if self.quantization is None:
            return self
        if self.dtype not in ("auto", "bfloat16"):
            raise ValueError(f"quantization={self.quantization!r} runs bfloat16 activations; dtype must be 'auto' "
                             f"or 'bfloat16', not {self.dtype!r}")
        if self.device == "cuda" or self.tensor_parallel_size > 1:
            raise ValueError(f"quantization={self.quantization!r} runs on one CPU process (device='cpu', "
                             f"tensor_parallel_size=1)")
        return self

    @property
    def model_dtype(self) -> str:
        """The dtype name the weights load in: bfloat16 under a quantization, else ``dtype``."""
        return "bfloat16" if self.quantization is not None else self.dtype

    @field_validator("block_size")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        if v & (v - 1):
            raise ValueError(f"block_size={v} must be a power of two (e.g. 16 or 32)")
        return v

    @field_validator("trust_remote_code")
    @classmethod
    def _no_remote_code(cls, v: bool) -> bool:
        if v:
            raise ValueError("trust_remote_code=True is not supported: tokenleap never runs model-repo code")
        return v


class SpeculativeCommonConfig(BaseModel):
    """The speculative_config keys every method shares, validated by the engine. Method keys
    (prompt_lookup_*, suffix_decoding_*, ...) are validated by the method's own model. A method says which of
    the keys beyond ``method``, ``num_speculative_tokens`` and ``disable_by_batch_size`` it uses
    (``ProposerSpec.common_keys``); the others fail when set."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    method: str = Field(min_length=1)
    num_speculative_tokens: int | None = Field(None, ge=1, le=32)
    model: str | None = Field(None, min_length=1)
    draft_tensor_parallel_size: int | None = Field(None, ge=1)  # 1 or the target's: checked by EngineConfig
    parallel_drafting: bool = False
    disable_padded_drafter_batch: bool = False
    disable_by_batch_size: int | None = Field(None, ge=2)
    max_model_len: int | None = Field(None, ge=2)
    # How drafts that come with probabilities are verified (one-hot drafts are always coupled): "coupled" accepts
    # a draft iff it is the token plain sampling draws there (output independent of the drafts), "rejection" is
    # standard speculative sampling (higher acceptance, output depends on the drafts), "auto" couples seeded
    # requests only. docs/sampling.md says why.
    draft_verification: Literal["auto", "coupled", "rejection"] = "auto"


COMMON_SPECULATIVE_KEYS = set(SpeculativeCommonConfig.model_fields)
# Common keys every method takes; the rest only when the method lists them in ProposerSpec.common_keys.
UNIVERSAL_SPECULATIVE_KEYS = {"method", "num_speculative_tokens", "disable_by_batch_size", "draft_verification"}
