"""The ``Proposer`` protocol and the data it receives and returns.

One engine step, seen from a proposer::

    engine                                   proposer
    ------                                   --------
    add_request        ──────────────────▶   on_request_added(request_id, prompt_token_ids)
    forward + verify
                       ──────────────────▶   on_verified([VerifiedRequest, ...])
    (next step's drafts)
                       ──────────────────▶   propose(ProposeBatch) -> Drafts
    request finished   ──────────────────▶   on_request_finished(request_id, token_ids)
    request aborted    ──────────────────▶   on_request_aborted(request_id)

Definitions used throughout (as in the speculative-decoding literature):

- *draft tokens*: what the proposer returns for a request, 0..k of them.
- *accepted tokens*: the leading draft tokens that verification kept.
- *recovered token*: at the first rejected position, the token sampled from the residual
  distribution ``normalize(max(p - q, 0))`` (greedy: the target argmax).
- *bonus token*: when every draft is accepted, the token sampled from the target at the next position.

Every verification step emits ``num_accepted + 1`` tokens (accepted + recovered/bonus), fewer only when a
stop condition ends the request inside the run.

Tensors (draft probabilities, hidden states) are whatever the engine runs on (``torch.Tensor``);
this module never imports torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class KVCacheNeeds:
    """Paged KV cache that a model-based proposer wants the engine to allocate beside the target's.

    The pages share the target's block size and block tables, so a draft never has to manage memory.
    """

    num_layers: int
    num_kv_heads: int
    head_dim: int


@dataclass(frozen=True)
class ProposerNeeds:
    """What a proposer needs from the engine. Model-free proposers (ngram, suffix) need nothing.

    hidden_state_layers: target layers whose output hidden states the proposer reads, as layer indices
        (negative counts from the end: ``(-1,)`` is the last layer, as EAGLE uses; EAGLE-3 asks for three).
    kv_cache: its own KV cache pages (draft model, EAGLE heads), or None.
    device_prompt_lookup: ``(lookup_min, lookup_max)`` when the drafts are always exactly
        ``prompt_lookup.prompt_lookup(token_ids, max_num_drafts, lookup_min, lookup_max)``: the engine may then
        draft on the device instead of calling ``propose`` (so that a verify step can be launched before the
        previous one is read back); lifecycle events still arrive. None: the engine always calls ``propose``.
    """

    hidden_state_layers: tuple[int, ...] = ()
    kv_cache: KVCacheNeeds | None = None
    device_prompt_lookup: tuple[int, int] | None = None


@dataclass(frozen=True)
class ProposerContext:
    """What the engine tells a proposer when it is built. Plain values only."""

    num_speculative_tokens: int  # k: the most draft tokens per request per step
    vocab_size: int
    max_model_len: int
    seed: int
    device: str = "cpu"  # "cpu" or "cuda[:N]"
    dtype: str = "float32"
    hidden_size: int = 0
    num_hidden_layers: int = 0
    eos_token_ids: tuple[int, ...] = ()
    # The target model object, for proposers that share its embeddings or head (EAGLE); None otherwise.
    target_model: Any = None


@dataclass(frozen=True)
class ProposeRequest:
    """One running request for which drafts are wanted.

    token_ids: prompt + every output token accepted so far (the last one is the token the next
        step will feed to the target). Read-only view; do not keep it across calls.
    num_prompt_tokens: how many of token_ids are the prompt.
    max_num_drafts: how many drafts are allowed for this request this step, 0..k (fewer near
        ``max_model_len`` or ``max_tokens``). Returning more is an error.
    hidden_state_rows: rows of ``ProposeBatch.hidden_states[layer]`` that belong to this request's
        tokens of the step that just ran, as ``(start, stop)``; None when no hidden states were asked for.
    """

    request_id: str
    token_ids: Sequence[int]
    num_prompt_tokens: int
    max_num_drafts: int
    hidden_state_rows: tuple[int, int] | None = None


@dataclass(frozen=True)
class ProposeBatch:
    """The requests of one step that may receive drafts for the next one.

    hidden_states: layer index (as asked in ``ProposerNeeds``) -> tensor ``[num_tokens, hidden]`` of
        the step that just ran; empty unless the proposer asked for layers.
    """

    requests: Sequence[ProposeRequest]
    hidden_states: Mapping[int, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Drafts:
    """A proposer's answer, aligned with ``ProposeBatch.requests``.

    token_ids: per request, 0..max_num_drafts draft token ids.
    probs: None when the proposer is deterministic (verification then treats each draft as
        one-hot), or per request a tensor ``[len(token_ids[i]), vocab]`` of the draft distribution each
        token was sampled from (None for a request with no drafts). Needed for lossless sampling with
        probabilistic drafters.
    """

    token_ids: Sequence[Sequence[int]]
    probs: Sequence[Any | None] | None = None


@dataclass(frozen=True)
class VerifiedRequest:
    """The result of verifying one request's drafts.

    num_draft_tokens: how many drafts were verified (0 when it had none).
    num_accepted_tokens: how many of them were accepted (a prefix of the drafts).
    new_token_ids: every token appended to the request this step: the accepted drafts, then the
        recovered or bonus token, truncated if a stop condition ended the request inside the run.
    """

    request_id: str
    num_draft_tokens: int
    num_accepted_tokens: int
    new_token_ids: Sequence[int]


@runtime_checkable
class Proposer(Protocol):
    """What the engine calls. Subclass :class:`ProposerBase` to get no-op lifecycle methods."""

    needs: ProposerNeeds

    def propose(self, batch: ProposeBatch) -> Drafts: ...

    def on_request_added(self, request_id: str, prompt_token_ids: Sequence[int]) -> None: ...

    def on_verified(self, results: Sequence[VerifiedRequest]) -> None: ...

    def on_request_finished(self, request_id: str, token_ids: Sequence[int]) -> None: ...

    def on_request_aborted(self, request_id: str) -> None: ...


class ProposerBase:
    """Convenience base: declares no needs and ignores lifecycle events."""

    needs: ProposerNeeds = ProposerNeeds()

    def propose(self, batch: ProposeBatch) -> Drafts:  # pragma: no cover - abstract
        raise NotImplementedError

    def on_request_added(self, request_id: str, prompt_token_ids: Sequence[int]) -> None:
        return None

    def on_verified(self, results: Sequence[VerifiedRequest]) -> None:
        return None

    def on_request_finished(self, request_id: str, token_ids: Sequence[int]) -> None:
        return None

    def on_request_aborted(self, request_id: str) -> None:
        return None


@dataclass(frozen=True)
class ProposerSpec:
    """How a plugin describes one method.

    method: the ``speculative_config["method"]`` string (also the entry-point name).
    build: ``build(config, context) -> Proposer``; ``config`` is an instance of ``config_model``.
    config_model: a pydantic model (``extra="forbid"``) of this method's own keys, or None when the
        method takes none. Common keys (method, num_speculative_tokens, model, ...) are validated by
        the engine and never reach it.
    default_num_speculative_tokens: used when the user gives no ``num_speculative_tokens``; a
        function of the validated config (suffix: the tree depth), or None to require the key.
    """

    method: str
    build: Callable[[Any, ProposerContext], Proposer]
    config_model: type | None = None
    default_num_speculative_tokens: Callable[[Any], int] | None = None
    description: str = ""
