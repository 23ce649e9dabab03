"""``/v1/chat/completions`` and ``/v1/completions``: request -> engine requests -> JSON body or SSE stream."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response, StreamingResponse

from tokenleap.async_llm import AsyncFrontend, EngineDeadError
from tokenleap.engine.request import Request
from tokenleap.llm import render_chat
from tokenleap.outputs import RequestOutput
from tokenleap.server import responses as R
from tokenleap.server.fanout import Fanout
from tokenleap.server.metrics import ServerMetrics
from tokenleap.server.protocol import (
    ApiError,
    ChatCompletionRequest,
    CompletionRequest,
    chat_messages,
    completion_prompts,
    sampling_params,
)


class OpenAIServing:
    """The two generation endpoints over one AsyncLLM or ProcessAsyncLLM."""

    def __init__(self, llm: AsyncFrontend, model_names: list[str], metrics: ServerMetrics) -> None:
        self.llm, self.model_names, self.metrics = llm, model_names, metrics
        self.speculative = llm.speculative_config is not None

    # -- endpoints -------------------------------------------------------------------------------------
    async def chat(self, req: ChatCompletionRequest, http: HttpRequest) -> Response:
        received = time.monotonic()
        self._check_model(req.model)
        tok = self._tokenizer("messages")
        try:
            prompt = render_chat(tok, chat_messages(req), add_generation_prompt=req.add_generation_prompt,
                                 chat_template_kwargs=req.chat_template_kwargs)
        except ApiError:
            raise
        except Exception as exc:  # noqa: BLE001 - the template's own error, about these messages
            raise ApiError(400, f"messages: the chat template failed: {type(exc).__name__}: {exc}",
                           "messages") from None
        self._check_length(prompt["prompt_token_ids"], "messages")
        if req.top_logprobs is not None and not req.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs=true", "top_logprobs")
        k = (req.top_logprobs or 0) if req.logprobs else None
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        sp = sampling_params(req, max_tokens, k)
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        groups = [self._make(prompt, sp, rid, "messages")]
        head = {"id": rid, "created": int(time.time()), "model": req.model}
        if req.stream:
            include_usage = req.stream_options is not None and req.stream_options.include_usage
            return _event_stream(self._stream(True, head, groups, http, req.n, include_usage, k or 0, received))
        outs = await self._collect(groups, http)
        if outs is None:
            return Response(status_code=499)
        choices = [{
            "index": c.index, "message": {"role": "assistant", "content": c.text},
            "logprobs": R.chat_logprobs(c, 0, len(c.token_ids), k or 0), "finish_reason": c.finish_reason,
        } for c in outs[0].outputs]
        self.metrics.request_latency.labels("chat").observe(time.monotonic() - received)
        return JSONResponse(self._body(head, "chat.completion", choices, outs))

    async def completions(self, req: CompletionRequest, http: HttpRequest) -> Response:
        received = time.monotonic()
        self._check_model(req.model)
        if req.echo:
            raise ApiError(400, "echo=true is not supported yet", "echo", code="unsupported_parameter")
        prompts = []
        for p in completion_prompts(req):
            if isinstance(p, str):
                ids = list(self._tokenizer("prompt").encode(p)) if p else []
                p = {"prompt_token_ids": ids, "prompt": p}
            self._check_length(p["prompt_token_ids"], "prompt")
            prompts.append(p)
        sp = sampling_params(req, req.max_tokens, req.logprobs)
        rid = f"cmpl-{uuid.uuid4().hex}"
        groups = [self._make(p, sp, f"{rid}-{i}" if len(prompts) > 1 else rid, "prompt") for i, p in enumerate(prompts)]
        head = {"id": rid, "created": int(time.time()), "model": req.model}
        k = req.logprobs or 0
        if req.stream:
            include_usage = req.stream_options is not None and req.stream_options.include_usage
            return _event_stream(self._stream(False, head, groups, http, req.n, include_usage, k, received))
        outs = await self._collect(groups, http)
        if outs is None:
            return Response(status_code=499)
        choices = [{
            "index": i * req.n + c.index, "text": c.text,
            "logprobs": R.completion_logprobs(c, 0, len(c.token_ids), k, 0), "finish_reason": c.finish_reason,
        } for i, o in enumerate(outs) for c in o.outputs]
        self.metrics.request_latency.labels("completions").observe(time.monotonic() - received)
        return JSONResponse(self._body(head, "text_completion", choices, outs))

    # -- helpers ---------------------------------------------------------------------------------------
    def _check_model(self, name: str) -> None:
        if name not in self.model_names:
            raise ApiError(404, f"The model `{name}` does not exist; this server serves {self.model_names}",
                           "model", code="model_not_found")

    def _tokenizer(self, param: str):
        tok = self.llm.get_tokenizer()
        if tok is None:
            raise ApiError(400, f"{param}: this model has no tokenizer; send token ids to /v1/completions", param)
        return tok

    def _check_length(self, ids: list[int], param: str) -> None:
        max_len = self.llm.max_model_len
        if not ids:
            raise ApiError(400, f"{param} is empty; a prompt needs at least one token", param)
        if len(ids) >= max_len:
            raise ApiError(400, f"This model's maximum context length is {max_len} tokens, but the {param} came to "
                                f"{len(ids)} tokens; at most {max_len - 1} prompt tokens leave room to generate",
                           param, code="context_length_exceeded")

    def _make(self, prompt: dict[str, Any], sp, rid: str, param: str) -> list[Request]:
        try:
            return self.llm.make_request(prompt, sp, rid)
        except EngineDeadError as exc:
            raise ApiError(503, str(exc), None, type="server_error", code="engine_dead") from None
        except (ValueError, TypeError) as exc:
            msg = str(exc).replace("prompts[0]", param).replace("sampling_params.", "")
            raise ApiError(400, msg, param) from None

    def _body(self, head: dict, obj: str, choices: list[dict], outs: list[RequestOutput]) -> dict[str, Any]:
        body = {**head, "object": obj, "choices": choices, "usage": R.usage(outs)}
        if self.speculative:
            body["spec_decode"] = R.spec_decode(outs)
        return body

    async def _collect(self, groups: list[list[Request]], http: HttpRequest) -> list[RequestOutput] | None:
        """The final outputs, or None if the client went away (its requests are then aborted)."""
        fan = Fanout(self.llm, groups, http)
        finals: list[RequestOutput | None] = [None] * len(groups)
        try:
            async with contextlib.aclosing(fan.outputs()) as outs:
                async for i, out in outs:
                    if out.finished:
                        finals[i] = out
        except EngineDeadError as exc:
            raise ApiError(503, str(exc), None, type="server_error", code="engine_dead") from None
        if fan.disconnected:
            return None
        return finals  # type: ignore[return-value]

    async def _stream(self, chat: bool, head: dict, groups: list[list[Request]], http: HttpRequest, n: int,
                      include_usage: bool, k: int, received: float) -> AsyncIterator[bytes]:
        endpoint = "chat" if chat else "completions"
        obj = "chat.completion.chunk" if chat else "text_completion"
        state = R.StreamState(n)
        finals: dict[int, RequestOutput] = {}
        last_chunk: dict[int, float] = {}
        chunk = R.ChunkEncoder({**head, "object": obj})
        itl, ttft = self.metrics.itl.labels(endpoint), self.metrics.ttft.labels(endpoint)  # (looked up once)

        fan = Fanout(self.llm, groups, http)
        try:
            if chat:
                yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                              "finish_reason": None} for i in range(len(groups) * n)])
            async with contextlib.aclosing(fan.outputs()) as outs:
                async for i, out in outs:
                    if out.finished:
                        finals[i] = out
                    choices = []
                    for c in out.outputs:
                        index = i * n + c.index
                        cur = state.cursor(index)
                        if cur.done:
                            continue
                        text, end = c.text[cur.text:], len(c.token_ids)
                        new_logprobs = c.logprobs is not None and end > cur.tokens
                        if not text and c.finish_reason is None and not new_logprobs:
                            continue
                        if chat:
                            choice = {"index": index, "delta": {"content": text} if text else {},
                                      "logprobs": R.chat_logprobs(c, cur.tokens, end, k)}
                        else:
                            choice = {"index": index, "text": text,
                                      "logprobs": R.completion_logprobs(c, cur.tokens, end, k, cur.text)}
                        choice["finish_reason"] = c.finish_reason
                        choices.append(choice)
                        _observe_chunk(itl, ttft, index, last_chunk, received)
                        cur.text, cur.tokens, cur.done = len(c.text), end, c.finish_reason is not None
                    if choices:
                        yield chunk(choices)
            if fan.disconnected:
                return
            if include_usage:
                outs_list = [finals[i] for i in sorted(finals)]
                body = {**head, "object": obj, "choices": [], "usage": R.usage(outs_list)}
                if self.speculative:
                    body["spec_decode"] = R.spec_decode(outs_list)
                yield R.sse(body)
            self.metrics.request_latency.labels(endpoint).observe(time.monotonic() - received)
        except Exception as exc:  # noqa: BLE001 - headers are sent: the error goes into the stream
            err = ApiError(503 if isinstance(exc, EngineDeadError) else 500, f"{type(exc).__name__}: {exc}",
                           type="server_error")
            yield R.sse(err.body())
        finally:
            fan.cancel()
        yield R.sse("[DONE]")


def _observe_chunk(itl, ttft, index: int, last: dict[int, float], received: float) -> None:
    """ITL between a completion's chunks; TTFT at the stream's first chunk (histograms already labelled)."""
    now = time.monotonic()
    if index in last:
        itl.observe(now - last[index])
    elif not last:
        ttft.observe(now - received)
    last[index] = now


def _event_stream(body: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(body, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
