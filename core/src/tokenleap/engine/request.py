"""A request's state inside the engine."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any

from tokenleap.outputs import Logprob, RequestMetrics
from tokenleap.sampling_params import SamplingParams


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED_STOPPED = "stop"
    FINISHED_LENGTH = "length"
    FINISHED_ABORTED = "abort"

    @property
    def finished(self) -> bool:
        return self in (RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH, RequestStatus.FINISHED_ABORTED)


@dataclass(eq=False)
class Request:
    """One completion being generated (a prompt with n > 1 becomes n requests).

    Invariant: ``num_computed_tokens`` tokens of ``all_token_ids`` have their KV in the cache; the
    rest (at least one, the last sampled token) is fed to the model in the next step.
    """

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    seed: int  # the sampling seed (params.seed, or drawn from the engine's seed)
    stream: int  # index among the n completions of the same prompt
    max_tokens: int  # resolved: params.max_tokens capped by max_model_len
    eos_token_ids: frozenset[int]
    priority: int = 0
    arrival_time: float = field(default_factory=time.monotonic)
    prompt: str | None = None

    status: RequestStatus = RequestStatus.WAITING
    output_token_ids: list[int] = field(default_factory=list)
    all_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    block_ids: list[int] = field(default_factory=list)
    num_cached_blocks: int = 0  # leading blocks already registered in the prefix cache
    block_hashes: list[bytes] = field(default_factory=list)
    spec_token_ids: list[int] = field(default_factory=list)  # drafts to verify in the next step
    spec_probs: Any = None  # [len(spec_token_ids), vocab] tensor or None
    constraints: Any = None  # structured.constraints.RequestConstraints (logit_bias, grammar, ...) or None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    logprobs: list[dict[int, Logprob]] | None = None
    cumulative_logprob: float = 0.0
    # incremental detokenisation
    text: str = ""
    prefix_offset: int = 0
    read_offset: int = 0
    metrics: RequestMetrics = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.all_token_ids = list(self.prompt_token_ids)
        if self.params.logprobs is not None:
            self.logprobs = []
        if self.metrics is None:
            self.metrics = RequestMetrics(arrival_time=self.arrival_time)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    def token_limit(self, max_model_len: int) -> int:
        """The most tokens (prompt + output) the request may reach: its max_tokens or the model's length."""
        return min(max_model_len, self.num_prompt_tokens + self.max_tokens)

    @property
    def is_decoding(self) -> bool:
        """All but the last token are in the cache: the next step samples."""
        return self.num_computed_tokens == self.num_tokens - 1

    def sort_key(self, policy: str) -> tuple:
        if policy == "priority":
            return (self.priority, self.arrival_time)
        return (self.arrival_time,)
