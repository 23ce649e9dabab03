"""Prompts and sampling parameters -> the engine's ``Request``s, every prompt parsed and validated before any is
made. Needs only the tokenizer and a few facts of the loaded model, so a process without the engine (the HTTP
side of ``tokenleap serve``, whose engine runs in a child process) makes requests exactly as ``LLM`` does."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from typing import Any

from tokenleap.engine.request import Request
from tokenleap.inputs import PromptType, parse_prompt
from tokenleap.sampling_params import SamplingParams
from tokenleap.structured import constraints

_SEED_MASK = (1 << 63) - 1


class RequestFactory:
    def __init__(self, tokenizer: Any, vocab_size: int, max_model_len: int, eos_token_ids: frozenset[int],
                 max_logprobs: int, seed: int) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.max_model_len = max_model_len
        tok_eos = getattr(tokenizer, "eos_token_id", None)
        self.eos_token_ids = frozenset(eos_token_ids) | (frozenset([tok_eos]) if tok_eos is not None else frozenset())
        self.max_logprobs = max_logprobs
        self._seed_rng = random.Random(seed)
        self._ids = itertools.count()

    def make(self, plist: list[PromptType], params: list[SamplingParams], priority: Sequence[int] | None,
             tokenization_kwargs: dict | None, request_ids: Sequence[str] | None = None) -> list[list[Request]]:
        """The engine requests of each prompt (n per prompt); raises ValueError / TypeError naming the bad field."""
        parsed = [parse_prompt(i, p, self.tokenizer, tokenization_kwargs) for i, p in enumerate(plist)]
        for i, (pp, sp) in enumerate(zip(parsed, params)):
            self.validate(i, pp.token_ids, sp)
        groups: list[list[Request]] = []
        for i, (pp, sp) in enumerate(zip(parsed, params)):
            base_seed = sp.seed if sp.seed is not None else self._seed_rng.getrandbits(63)
            rid = request_ids[i] if request_ids is not None else str(next(self._ids))
            max_tokens = self.max_tokens(len(pp.token_ids), sp)
            groups.append([
                Request(request_id=rid if sp.n == 1 else f"{rid}-{j}", prompt_token_ids=pp.token_ids, params=sp,
                        seed=base_seed & _SEED_MASK, stream=j, max_tokens=max_tokens, eos_token_ids=self.eos_token_ids,
                        priority=priority[i] if priority is not None else 0, prompt=pp.text)
                for j in range(sp.n)
            ])
        return groups

    def validate(self, i: int, ids: list[int], sp: SamplingParams) -> None:
        max_len, vocab = self.max_model_len, self.vocab_size
        if not ids:
            raise ValueError(f"prompts[{i}] is empty; a prompt needs at least one token")
        if len(ids) >= max_len:
            raise ValueError(f"prompts[{i}] has {len(ids)} tokens; max_model_len={max_len} leaves no room to generate")
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"prompts[{i}] has token id(s) {bad[:5]} outside the vocabulary [0, {vocab})")
        if sp.logprobs is not None and sp.logprobs > self.max_logprobs:
            raise ValueError(f"sampling_params.logprobs={sp.logprobs} exceeds max_logprobs={self.max_logprobs}")
        bad_stop = [t for t in (sp.stop_token_ids or []) if not 0 <= t < vocab]
        if bad_stop:
            raise ValueError(f"sampling_params.stop_token_ids has id(s) {bad_stop} outside [0, {vocab})")
        # logit_bias / allowed_token_ids ids in the vocabulary, bad_words tokenized, structured outputs compiled
        # (cached: the engine's add_request then builds each completion's own matcher at no compile cost)
        constraints.for_request(sp, self.tokenizer, vocab, [])

    def max_tokens(self, prompt_len: int, sp: SamplingParams) -> int:
        room = self.max_model_len - prompt_len
        return room if sp.max_tokens is None else min(sp.max_tokens, room)


def params_list(sampling_params: SamplingParams | Sequence[SamplingParams] | None, n: int) -> list[SamplingParams]:
    """One SamplingParams per prompt (one given for all, or a list of n)."""
    if sampling_params is None:
        return [SamplingParams()] * n
    if isinstance(sampling_params, SamplingParams):
        return [sampling_params] * n
    sp = list(sampling_params)
    if len(sp) != n:
        raise ValueError(f"sampling_params is a list of {len(sp)} but there are {n} prompts; give one or {n}")
    for i, p in enumerate(sp):
        if not isinstance(p, SamplingParams):
            raise TypeError(f"sampling_params[{i}] is a {type(p).__name__}, not SamplingParams")
    return sp
