"""The ``LLM`` facade, as vLLM users know it: ``LLM(model=...).generate(prompts, params)``."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

from tokenleap.config import EngineConfig
from tokenleap.engine.engine import Engine
from tokenleap.engine.request import Request
from tokenleap.engine.request_factory import RequestFactory, params_list
from tokenleap.inputs import PromptType, as_prompt_list
from tokenleap.logging_setup import configure_logging
from tokenleap.outputs import CompletionOutput, RequestOutput
from tokenleap.sampling_params import SamplingParams


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
        eng = self.engine
        self.requests = RequestFactory(eng.tokenizer, eng.arch.vocab_size, eng.max_model_len,
                                       frozenset(eng.arch.eos_token_ids), self.config.max_logprobs, seed)
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
        return self.requests.make(plist, params, priority, tokenization_kwargs, request_ids)

    def _params_list(self, sampling_params, n: int) -> list[SamplingParams]:
        return params_list(sampling_params, n)

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
