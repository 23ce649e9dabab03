"""Request bodies of the OpenAI-compatible endpoints, as pydantic models (unknown fields are an error), and
their translation into ``SamplingParams``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tokenleap.sampling_params import SamplingParams


class ApiError(Exception):
    """An error answered as OpenAI's ``{"error": {"message", "type", "param", "code"}}`` with an HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, type: str = "invalid_request_error",
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class StreamOptions(_Strict):
    include_usage: bool = False


class _SamplingFields(_Strict):
    """Fields both endpoints share (OpenAI's, then tokenleap's / vLLM's extensions)."""

    model: str
    n: int = Field(1, ge=1, le=128)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    logit_bias: dict[str, float] | None = None
    response_format: dict[str, Any] | None = None  # {"type": "text" | "json_object" | "json_schema", ...}
    user: str | None = None
    # extensions
    top_k: int = Field(0, ge=-1)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    repetition_penalty: float = Field(1.0, gt=0.0)
    min_tokens: int = Field(0, ge=0)
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    add_generation_prompt: bool = True
    chat_template_kwargs: dict[str, Any] | None = None


class CompletionRequest(_SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False


def chat_messages(req: ChatCompletionRequest) -> list[dict[str, Any]]:
    """The messages as the chat template takes them; content parts must be text."""
    out = []
    for i, m in enumerate(req.messages):
        content = m.content
        if isinstance(content, list):
            texts = []
            for j, part in enumerate(content):
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise ApiError(400, f"messages[{i}].content[{j}] has type {part.get('type')!r}; only "
                                        f"{{'type': 'text', 'text': str}} parts are supported",
                                   f"messages[{i}].content[{j}]")
                texts.append(part["text"])
            content = "".join(texts)
        msg = {"role": m.role, "content": content or ""}
        if m.name is not None:
            msg["name"] = m.name
        out.append(msg)
    return out


def completion_prompts(req: CompletionRequest) -> list[str | dict[str, Any]]:
    """``prompt`` as a list of prompts (text, or token ids as a TokensPrompt)."""
    p = req.prompt
    if isinstance(p, str):
        return [p]
    if not p:
        raise ApiError(400, "prompt is empty; give a string, a list of strings or token ids", "prompt")
    if all(isinstance(x, int) for x in p):
        return [{"prompt_token_ids": list(p)}]
    return [x if isinstance(x, str) else {"prompt_token_ids": list(x)} for x in p]


def sampling_params(req: ChatCompletionRequest | CompletionRequest, max_tokens: int | None,
                    logprobs: int | None) -> SamplingParams:
    """The request's SamplingParams; a value SamplingParams refuses is an ApiError naming the field."""
    import pydantic

    kwargs: dict[str, Any] = dict(
        n=req.n, temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p, top_k=req.top_k, min_p=req.min_p,
        presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty,
        repetition_penalty=req.repetition_penalty, seed=req.seed, max_tokens=max_tokens, min_tokens=req.min_tokens,
        stop=req.stop, stop_token_ids=req.stop_token_ids, ignore_eos=req.ignore_eos,
        include_stop_str_in_output=req.include_stop_str_in_output, logprobs=logprobs,
        skip_special_tokens=req.skip_special_tokens,
    )
    if req.logit_bias is not None:
        try:
            kwargs["logit_bias"] = {int(k): v for k, v in req.logit_bias.items()}
        except ValueError:
            raise ApiError(400, f"logit_bias keys must be token ids (integers as strings), got "
                                f"{list(req.logit_bias)[:5]}", "logit_bias") from None
    structured = structured_outputs(req.response_format)
    if structured is not None:
        kwargs["structured_outputs"] = structured
    try:
        return SamplingParams(**kwargs)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(x) for x in err["loc"]) or None
        msg = err["msg"].removeprefix("Value error, ")
        raise ApiError(400, f"{field}: {msg}" if field else msg, field) from None


def structured_outputs(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    """OpenAI's ``response_format`` as ``SamplingParams.structured_outputs`` (None for plain text)."""
    if response_format is None:
        return None
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"json_object": True}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise ApiError(400, "response_format.json_schema.schema must be a JSON schema object",
                           "response_format.json_schema")
        return {"json": spec["schema"]}
    raise ApiError(400, f"response_format.type={kind!r} is not one of 'text', 'json_object', 'json_schema'",
                   "response_format.type")
