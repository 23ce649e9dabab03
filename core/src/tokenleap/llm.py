"""The ``LLM`` facade, as vLLM users know it: ``LLM(model=...).generate(prompts, params)``."""

from __future__ import annotations

import itertools
import random
import threading
from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

from tokenleap.config import EngineConfig
from tokenleap.engine.engine import Engine
from tokenleap.engine.request import Request
from tokenleap.inputs import PromptType, as_prompt_list, parse_prompt
from tokenleap.logging_setup import configure_logging
from tokenleap.outputs import CompletionOutput, RequestOutput
from tokenleap.sampling_params import SamplingParams
from tokenleap.structured import constraints

_SEED_MASK = (1 << 63) - 1


class LLM:
    """An offline engine. ``speculative_config`` switches speculative decoding on; outputs are the same
    tokens (greedy) or the same distribution (sampling) as without it."""

    def __init__(self, model: str, tokenizer: str | None = None, dtype: str = "auto", seed: int = 0,
                 max_model_len: int | None = None, gpu_memory_utilization: float = 0.9,
                 enforce_eager: bool = False, tensor_parallel_size: int = 1,
                 speculative_config: dict[str, Any] | None = None, *, disable_log_stats: bool = True,
                 proposer_manager=None, **kwargs: Any) -> None:
        """``disable_log_stats`` (True, as in vLLM's ``LLM``): False logs an ``engine stats`` line (throughput,
        acceptance) every ``log_stats_interval_s`` seconds."""
        configure_logging()
        self.config = EngineConfig(
            model=model, tokenizer=tokenizer, dtype=dtype, seed=seed, max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization, enforce_eager=enforce_eager,
            tensor_parallel_size=tensor_parallel_size, speculative_config=speculative_config,
            disable_log_stats=disable_log_stats, **kwargs,
        )
        self.engine = Engine(self.config, proposer_manager)
        self._seed_rng = random.Random(seed)
        self._ids = itertools.count()
        self._engine_lock = threading.RLock()  # held by whoever steps the engine (generate, or AsyncLLM's thread)
        self._async = None  # the AsyncLLM behind agenerate, made on first use

    def get_tokenizer(self):
        return self.engine.tokenizer

    def get_metrics(self):
        return self.engine.metrics()

    def generate(self, prompts: PromptType | Sequence[PromptType], sampling_params: SamplingParams |
                 Sequence[SamplingParams] | None = None, *, use_tqdm: bool = True,
                 priority: Sequence[int] | None = None, tokenization_kwargs: dict | None = None) -> list[RequestOutput]:
        plist = as_prompt_list(prompts)
        params = self._params_list(sampling_params, len(plist))
        if priority is not None:
            if len(priority) != len(plist):
                raise ValueError(f"priority has {len(priority)} entries but there are {len(plist)} prompts")
            if self.config.scheduling_policy != "priority" and any(p != 0 for p in priority):
                raise ValueError("priority needs LLM(..., scheduling_policy='priority'); the engine runs 'fcfs'")
        groups = self._make_requests(plist, params, priority, tokenization_kwargs)
        self._run([r for g in groups for r in g], use_tqdm)
        return [self._output(g) for g in groups]

    def chat(self, messages, sampling_params=None, *, use_tqdm: bool = True, chat_template: str | None = None,
             add_generation_prompt: bool = True, chat_template_kwargs: dict | None = None) -> list[RequestOutput]:
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        prompts = [render_chat(self.engine.tokenizer, conv, i, chat_template=chat_template,
                               add_generation_prompt=add_generation_prompt, chat_template_kwargs=chat_template_kwargs)
                   for i, conv in enumerate(conversations)]
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm)

    async def agenerate(self, prompts: PromptType | Sequence[PromptType], sampling_params: SamplingParams |
                        Sequence[SamplingParams] | None = None) -> list[RequestOutput]:
        """``generate`` for asyncio code: the same outputs, while the event loop keeps running. The engine steps
        in a background thread (``AsyncLLM``) together with any other request made meanwhile; cancelling the
        awaiting task aborts the prompts' requests."""
        from tokenleap.async_llm import AsyncLLM

        if self._async is None:
            self._async = AsyncLLM.from_llm(self)
        return await self._async.generate_all(prompts, sampling_params)

    # -- helpers --------------------------------------------------------------------------------
    def _make_requests(self, plist: list[PromptType], params: list[SamplingParams], priority: Sequence[int] | None,
                       tokenization_kwargs: dict | None, request_ids: Sequence[str] | None = None
                       ) -> list[list[Request]]:
        """The engine requests of each prompt (n per prompt), every prompt parsed and validated first."""
        parsed = [parse_prompt(i, p, self.engine.tokenizer, tokenization_kwargs) for i, p in enumerate(plist)]
        for i, (pp, sp) in enumerate(zip(parsed, params)):
            self._validate(i, pp.token_ids, sp)
        eos = frozenset(self.engine.arch.eos_token_ids) | self._tokenizer_eos()
        groups: list[list[Request]] = []
        for i, (pp, sp) in enumerate(zip(parsed, params)):
            base_seed = sp.seed if sp.seed is not None else self._seed_rng.getrandbits(63)
            rid = request_ids[i] if request_ids is not None else str(next(self._ids))
            max_tokens = self._max_tokens(len(pp.token_ids), sp)
            groups.append([
                Request(request_id=rid if sp.n == 1 else f"{rid}-{j}", prompt_token_ids=pp.token_ids, params=sp,
                        seed=base_seed & _SEED_MASK, stream=j, max_tokens=max_tokens, eos_token_ids=eos,
                        priority=priority[i] if priority is not None else 0, prompt=pp.text)
                for j in range(sp.n)
            ])
        return groups

    def _params_list(self, sampling_params, n: int) -> list[SamplingParams]:
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

    def _validate(self, i: int, ids: list[int], sp: SamplingParams) -> None:
        max_len, vocab = self.engine.max_model_len, self.engine.arch.vocab_size
        if not ids:
            raise ValueError(f"prompts[{i}] is empty; a prompt needs at least one token")
        if len(ids) >= max_len:
            raise ValueError(f"prompts[{i}] has {len(ids)} tokens; max_model_len={max_len} leaves no room to generate")
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"prompts[{i}] has token id(s) {bad[:5]} outside the vocabulary [0, {vocab})")
        if sp.logprobs is not None and sp.logprobs > self.config.max_logprobs:
            raise ValueError(f"sampling_params.logprobs={sp.logprobs} exceeds max_logprobs={self.config.max_logprobs}")
        bad_stop = [t for t in (sp.stop_token_ids or []) if not 0 <= t < vocab]
        if bad_stop:
            raise ValueError(f"sampling_params.stop_token_ids has id(s) {bad_stop} outside [0, {vocab})")
        # logit_bias / allowed_token_ids ids in the vocabulary, bad_words tokenized, structured outputs compiled
        # (cached: the engine's add_request then builds each completion's own matcher at no compile cost)
        constraints.for_request(sp, self.engine.tokenizer, vocab, [])

    def _max_tokens(self, prompt_len: int, sp: SamplingParams) -> int:
        room = self.engine.max_model_len - prompt_len
        return room if sp.max_tokens is None else min(sp.max_tokens, room)

    def _tokenizer_eos(self) -> frozenset[int]:
        tok = self.engine.tokenizer
        return frozenset([tok.eos_token_id]) if tok is not None and tok.eos_token_id is not None else frozenset()

    def _run(self, requests: list[Request], use_tqdm: bool) -> None:
        with self._engine_lock:  # an AsyncLLM over this engine steps it between our steps, never during one
            self._run_locked(requests, use_tqdm)

    def _run_locked(self, requests: list[Request], use_tqdm: bool) -> None:
        engine = self.engine
        bar = tqdm(total=len(requests), desc="Processed prompts", unit="req", disable=not use_tqdm,
                   dynamic_ncols=True)
        try:
            for r in requests:
                engine.add_request(r)
            pending = {r.request_id for r in requests}
            start_tokens = engine.counters.generation_tokens
            while pending:
                for done in engine.step():
                    if done.request_id in pending:
                        pending.discard(done.request_id)
                        bar.update(1)
                if use_tqdm:
                    elapsed = max(bar.format_dict["elapsed"], 1e-9)
                    rate = (engine.counters.generation_tokens - start_tokens) / elapsed
                    bar.set_postfix_str(f"{rate:.1f} tok/s", refresh=False)
        except BaseException:
            for r in requests:  # leave no half-finished batch behind
                engine.abort_request(r.request_id)
            raise
        finally:
            bar.close()

    @staticmethod
    def _output(group: list[Request]) -> RequestOutput:
        first = group[0]
        outs = [
            CompletionOutput(index=r.stream, text=r.text, token_ids=list(r.output_token_ids),
                             cumulative_logprob=r.cumulative_logprob if r.logprobs is not None else None,
                             logprobs=list(r.logprobs) if r.logprobs is not None else None,
                             finish_reason=r.finish_reason, stop_reason=r.stop_reason)
            for r in group
        ]
        rid = first.request_id.rsplit("-", 1)[0] if len(group) > 1 else first.request_id
        return RequestOutput(request_id=rid, prompt=first.prompt, prompt_token_ids=list(first.prompt_token_ids),
                             outputs=outs, finished=all(r.status.finished for r in group), metrics=first.metrics,
                             num_cached_tokens=first.metrics.num_cached_prompt_tokens)


def render_chat(tokenizer, conversation: Any, index: int = 0, *, chat_template: str | None = None,
                add_generation_prompt: bool = True, chat_template_kwargs: dict | None = None) -> dict[str, Any]:
    """One conversation through the tokenizer's chat template: a TokensPrompt with its text."""
    if tokenizer is None:
        raise ValueError("chat() needs a tokenizer; this model was loaded without one")
    if not conversation or not all(isinstance(m, dict) and "role" in m and "content" in m for m in conversation):
        raise ValueError(f"messages[{index}] must be a non-empty list of {{'role': ..., 'content': ...}} dicts")
    ids = tokenizer.apply_chat_template(conversation, chat_template=chat_template, tokenize=True,
                                        add_generation_prompt=add_generation_prompt, **(chat_template_kwargs or {}))
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    return {"prompt_token_ids": list(ids), "prompt": tokenizer.decode(ids)}
