"""The ``Proposer`` protocol and the data it receives and returns.

One engine step, seen from a proposer::

    engine                                   proposer
    ------                                   --------
    (build)            ──────────────────▶   spec.build(config, ProposerContext) -> proposer
                                             (a model of its own: context.model_loader.load)
                       ──────────────────▶   bind_kv_cache(ProposerKVCache)        (when needs.kv_cache)
                       ──────────────────▶   device_drafter(DeviceDraftingSpec)    (GPU, may return None)
    add_request        ──────────────────▶   on_request_added(request_id, prompt_token_ids)
    forward + verify
                       ──────────────────▶   on_verified([VerifiedRequest, ...])
    (next step's drafts)
                       ──────────────────▶   propose(ProposeBatch) -> Drafts
    request preempted  ──────────────────▶   on_request_preempted(request_id)
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

Tensors (draft probabilities, hidden states, KV caches) are whatever the engine runs on (``torch.Tensor``);
this module never imports torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class KVCacheNeeds:
    """A paged KV cache that a model-based proposer wants the engine to allocate beside the target's.

    The engine allocates as many blocks as the target has, of the target's block size, and a request's drafts
    use the request's own block table (``ProposeRequest.block_ids``): block ``b`` of the proposer's cache holds
    the proposer's keys and values of the same token positions as block ``b`` of the target's. So preemption,
    prefix caching and freeing need nothing from the proposer: when the engine frees or shares a block, it does
    so for both. The memory budget covers both caches.

    dtype: a torch dtype name ("bfloat16", ...), or None for the target's.
    num_kv_heads: the model's (the whole model's). When the proposer's model came from ``ModelLoader.load`` and
        runs sharded over the target's ranks, the cache is that model's and is split as the model is: each rank's
        cache holds the KV heads of its shard (``ProposerKVCache.layers`` on rank 0 has rank 0's), and the engine
        checks that the needs are that model's layers, KV heads and head size.
    """

    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: str | None = None


@dataclass(frozen=True)
class ProposerNeeds:
    """What a proposer needs from the engine. Model-free proposers (ngram, suffix) need nothing.

    hidden_state_layers: target layers whose hidden states the proposer reads, as layer indices; ``i >= 0`` is
        the input of decoder layer ``i`` (the residual stream before it: EAGLE-3's auxiliary layers), ``-1`` is
        the output of the last decoder layer before the final norm (EAGLE-1). Negative ``i`` counts outputs from
        the end (``-2``: the output of the layer before the last, the same as input ``N - 1``).
    kv_cache: its own paged KV cache (draft model, EAGLE heads), or None.
    every_step: True when the proposer must see every token the target computes (its KV cache or a state that
        follows the target's): ``propose`` then receives every request that ran in the step, those mid-prefill
        and those finishing in it included (with ``max_num_drafts`` 0), with the tokens the step computed
        (``ProposeRequest.computed``). Implied by ``kv_cache`` or ``hidden_state_layers``.
    """

    hidden_state_layers: tuple[int, ...] = ()
    kv_cache: KVCacheNeeds | None = None
    every_step: bool = False

    @property
    def sees_every_step(self) -> bool:
        return self.every_step or self.kv_cache is not None or bool(self.hidden_state_layers)


@dataclass(frozen=True)
class SpeculativeSettings:
    """The common ``speculative_config`` keys a method may use (those it lists in ``ProposerSpec.common_keys``).

    model: what to load (a local folder, a .gguf file or an alias), as the user wrote it.
    max_model_len: the longest context speculation runs at (None: the target's); past it the engine stops
        drafting for the request (the draft's positions end there).
    draft_tensor_parallel_size: 1 or the target's tensor_parallel_size (the engine rejects other values). A
        method that takes this key either loads its model through ``ProposerContext.model_loader`` (which runs it
        as this says) or refuses values above 1 in its preflight.
    """

    model: str | None = None
    max_model_len: int | None = None
    draft_tensor_parallel_size: int = 1
    parallel_drafting: bool = False
    disable_padded_drafter_batch: bool = False


@dataclass(frozen=True)
class TargetHandles:
    """Typed handles to the target model, for proposers that share its parts (EAGLE, MTP heads).

    embed(ids [n] int64) -> [n, hidden] in the model's dtype: the target's token embedding.
    compute_logits(hidden [n, hidden]) -> [n, vocab] float32: the target's LM head (after its final norm).
    final_norm(hidden [n, hidden]) -> [n, hidden]: the target's final RMSNorm.
    embedding_weight / lm_head_weight: the tensors themselves ([vocab, hidden]; the same tensor when tied); None
        under tensor parallelism, where each rank holds a slice of the vocabulary (``embed`` and ``compute_logits``
        then run on every rank and return the whole rows on the engine's process).
    tokenizer: the target's tokenizer (a transformers tokenizer), or None for dummy weights without one.
    """

    embed: Callable[[Any], Any]
    compute_logits: Callable[[Any], Any]
    final_norm: Callable[[Any], Any]
    embedding_weight: Any = None
    lm_head_weight: Any = None
    tokenizer: Any = None


@dataclass(frozen=True)
class ModelLoader:
    """How the engine loads a proposer's own model (a Llama-family checkpoint: a draft model) as it runs its models:
    with ``draft_tensor_parallel_size`` 1 whole, on ``ProposerContext.device`` of the engine's process (rank 0);
    with the target's size, sharded over the target's ranks like the target, every forward and logits call on it
    then running on all ranks in lockstep. The proposer calls the model the same way either way.

    check(path, load_format="auto") -> None: raises ``ValueError`` naming the setting, the value and what is allowed
        when the engine cannot run that model so (a draft whose heads, KV heads or MLP the ranks cannot share).
        Reads the architecture only; call it from ``preflight``, before any weights load or process starts.
    load(path, load_format="auto", max_positions=None) -> model: the weights in the target's dtype on the engine's
        device and attention backend (``load_format`` "dummy": random weights of the config.json's shape, seeded by
        the engine's seed); its RoPE covers ``max_positions`` (default: the model's). The model: ``model(ids [n],
        positions [n], kv_caches, attention_metadata) -> (final-norm hidden [n, hidden], {})``,
        ``model.compute_logits(hidden [m, hidden]) -> [m, vocab]`` float32, ``model.cfg``: the whole model's
        architecture (``num_hidden_layers``, ``num_key_value_heads``, ``head_dim``, ``vocab_size``, ...), from which
        the proposer states its ``KVCacheNeeds``. One sharded model per engine.
    """

    load: Callable[..., Any]
    check: Callable[..., None]


@dataclass(frozen=True)
class ProposerContext:
    """What the engine tells a proposer when it is built."""

    num_speculative_tokens: int  # k: the most draft tokens per request per step
    vocab_size: int
    max_model_len: int  # the target's
    seed: int
    device: str = "cpu"  # "cpu" or "cuda[:N]"
    dtype: str = "float32"  # the target's dtype name
    hidden_size: int = 0
    num_hidden_layers: int = 0
    eos_token_ids: tuple[int, ...] = ()
    block_size: int = 16
    attention_backend: str = "torch"  # "torch" or "triton": the engine's kernels, for proposers that use them
    speculative: SpeculativeSettings = field(default_factory=SpeculativeSettings)
    # where the target is loaded from (a folder or a .gguf file): its tokenizer, or extra layers its checkpoint
    # keeps (MTP); "" in the conformance kit
    target_model_path: str = ""
    target_load_format: str = "auto"  # "dummy": random target weights (speed measurements)
    target: TargetHandles | None = None  # None in preflight and in the conformance kit's simulated engine
    # loads the proposer's own model as the engine runs models (whole, or sharded over the target's ranks); None in
    # the conformance kit's simulated engine, where a proposer loads its model itself
    model_loader: ModelLoader | None = None
    # False: run every forward eagerly, capturing no CUDA graph (enforce_eager, or tensor parallelism: the target's
    # handles and a sharded model's calls run collectives that one process's graph would not replay on the others)
    cuda_graphs: bool = True


@dataclass(frozen=True)
class ProposerKVCache:
    """The proposer's paged KV cache, allocated by the engine from ``KVCacheNeeds``.

    layers: per layer ``(k, v)``, each ``[num_blocks, block_size, num_kv_heads, head_dim]``. Block 0 is the null
        block (padding writes land there; no request owns it).
    """

    layers: Sequence[tuple[Any, Any]]
    num_blocks: int
    block_size: int


@dataclass(frozen=True)
class SamplingInfo:
    """A request's sampling parameters, for proposers that sample their drafts (temperature > 0).

    Draft probabilities must come from the distribution the draft was drawn from; matching the target's
    temperature and truncation raises acceptance. ``seed`` and ``stream`` key the engine's noise
    (``tokenleap.sample.noise``) for proposers that want reproducible drafts.

    coupled: verification accepts a draft only if it equals the token the target itself draws there with the
        request's noise (``speculative_config.draft_verification``; seeded requests by default): draw draft ``j``
        with ``tokenleap.sample.noise.sample_with_noise(q, seed, stream, output_position)`` (output_position =
        ``len(token_ids) - num_prompt_tokens + j``) to be accepted whenever the target would draw the same token.
        Otherwise drafts are verified by rejection sampling and must be drawn with noise independent of the
        target's (any other generator or noise domain).
    """

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    min_p: float = 0.0
    seed: int = 0
    stream: int = 0
    coupled: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class ComputedTokens:
    """The tokens the target computed (and kept) for one request in the step that just ran.

    start: position of the first one (an index into ``ProposeRequest.token_ids``); count: how many. Positions
        ``start .. start + count - 1`` now hold the target's KV; the request's rows of the step's hidden states
        are ``hidden_rows .. hidden_rows + count - 1`` in that order. A verify step's rejected draft rows follow
        them in the flat batch (``num_rejected`` of them) and are not part of ``count``.
    After a prefix-cache hit, the first chunk starts past the cached blocks: those positions were computed by an
    earlier request (a proposer with ``kv_cache`` finds its own KV for them in the shared blocks, written when
    that request ran, since it sees every computed token).
    """

    start: int
    count: int
    hidden_rows: int = 0
    num_rejected: int = 0


@dataclass(frozen=True)
class ProposeRequest:
    """One request of the step; drafts are wanted for it when ``max_num_drafts`` > 0.

    token_ids: prompt + every output token accepted so far. When decoding, the last one is the token the next
        step feeds to the target (its KV is not computed yet). Read-only view; do not keep it across calls.
    num_prompt_tokens: how many of token_ids are the prompt.
    max_num_drafts: how many drafts are allowed this step, 0..k (fewer near ``max_model_len`` or
        ``max_tokens``; 0 for a request mid-prefill or finishing, sent only to proposers that see every step).
        Returning more is an error.
    hidden_state_rows: rows of ``ProposeBatch.hidden_states[layer]`` that belong to this request's tokens of the
        step that just ran, as ``(start, stop)`` (rejected draft rows included); None without hidden states.
    computed: the tokens the step computed and kept for this request (None when the step did not run it).
    num_computed_tokens: tokens of ``token_ids`` whose target KV is in the cache now.
    block_ids: the request's block table (shared with a proposer's own KV cache), covering at least
        ``len(token_ids) - 1 + max_num_drafts`` positions.
    sampling: the request's sampling parameters.
    """

    request_id: str
    token_ids: Sequence[int]
    num_prompt_tokens: int
    max_num_drafts: int
    hidden_state_rows: tuple[int, int] | None = None
    computed: ComputedTokens | None = None
    num_computed_tokens: int = 0
    block_ids: Sequence[int] = ()
    sampling: SamplingInfo = field(default_factory=SamplingInfo)


@dataclass(frozen=True)
class ProposeBatch:
    """The requests of one step that may receive drafts for the next one.

    hidden_states: layer index (as asked in ``ProposerNeeds``) -> tensor ``[num_rows, hidden]`` of the step that
        just ran; empty unless the proposer asked for layers.
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
    parents: reserved for tree drafts (per request, the index of each draft's parent, -1 for the root); chains
        leave it None, and the engine verifies chains only today.
    """

    token_ids: Sequence[Sequence[int]]
    probs: Sequence[Any | None] | None = None
    parents: Sequence[Sequence[int]] | None = None


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


@dataclass(frozen=True)
class DeviceDraftingSpec:
    """What the engine tells a proposer that may draft on the device (GPU steps launched ahead of the host).

    max_rows: the most requests of a step; max_query_len: 1 + k; max_model_len: the target's; block_size: the
    KV block size; device: "cuda:N" (or "cpu" in tests); backend: "triton" (use the fast kernels) or "torch"
    (the reference, any device).
    """

    max_rows: int
    max_query_len: int
    max_model_len: int
    block_size: int
    device: str
    backend: str


@dataclass(frozen=True)
class DeviceDraftStep:
    """The inputs of the next verify step, written in place by a device drafter (views of the graph's inputs).

    Rows whose ``feed`` flag is 1 are drafted here; the others keep what the host staged. Shapes (b requests of
    q = 1 + k query rows each):

        last        [>= b, q + 2] int64  the previous step of the same rows: argmax per query row, then the
                                         number of tokens it emitted (the first ones of its argmax), then its
                                         number of drafts
        feed        [b] int64            1: draft and build this row here
        limits      [b] int64            the most tokens the request may reach (max_model_len, prompt + max_tokens)
        tables      [b, max_blocks] int32
        ids, positions, slots   [b * q] int64   (written) last emitted token, drafts, padding (token 0, null slot)
        seq_lens    [b] int32                   (written) context length including the step's q rows
        num_drafts  [b] int64                   (written)
        hidden_states  layer -> [>= b, q, hidden]  the previous step's hidden states of the proposer's
                                         ``needs.hidden_state_layers`` (keys as there, values as
                                         ``ProposeBatch.hidden_states`` gives them): row r's query row j at
                                         [r, j]; a row's state after its last emitted token is at
                                         [r, emitted - 1]. Empty when the proposer asked for none.
    """

    last: Any
    feed: Any
    limits: Any
    tables: Any
    ids: Any
    positions: Any
    slots: Any
    seq_lens: Any
    num_drafts: Any
    q: int
    block_size: int
    hidden_states: Mapping[int, Any] = field(default_factory=dict)


@runtime_checkable
class DeviceDrafter(Protocol):
    """Drafts on the device with no host sync, inside the captured verify graph (its first kernel(s)).

    load_histories: the token history of graph rows 0.. (prompt + output so far, one list per row), queued on
        the stream before the first verify step launched ahead; each ``draft`` call then appends the previous
        step's emitted tokens (``step.last``) itself.
    draft: write the next verify step's inputs of the fed rows (capturable: fixed shapes, no host sync). Its
        drafts must equal what ``propose`` would return for the same tokens and hidden states (the conformance
        kit checks this for drafters of tokens alone).

    A step drafted on the device is not shown to ``propose`` (``on_verified`` still sees it): a proposer whose
    state follows every step (its own KV cache, say) offers a drafter only if the drafter keeps that state.
    """

    def load_histories(self, token_ids: Sequence[Sequence[int]]) -> None: ...

    def draft(self, step: DeviceDraftStep) -> None: ...


@runtime_checkable
class Proposer(Protocol):
    """What the engine calls. Subclass :class:`ProposerBase` to get no-op defaults for everything but
    ``propose``."""

    needs: ProposerNeeds

    def propose(self, batch: ProposeBatch) -> Drafts: ...

    def on_request_added(self, request_id: str, prompt_token_ids: Sequence[int]) -> None: ...

    def on_verified(self, results: Sequence[VerifiedRequest]) -> None: ...

    def on_request_finished(self, request_id: str, token_ids: Sequence[int]) -> None: ...

    def on_request_aborted(self, request_id: str) -> None: ...


class ProposerBase:
    """Convenience base: declares no needs, ignores lifecycle events, drafts on the host only."""

    needs: ProposerNeeds = ProposerNeeds()

    def propose(self, batch: ProposeBatch) -> Drafts:  # pragma: no cover - abstract
        raise NotImplementedError

    def on_request_added(self, request_id: str, prompt_token_ids: Sequence[int]) -> None:
        return None

    def on_verified(self, results: Sequence[VerifiedRequest]) -> None:
        return None

    def on_request_preempted(self, request_id: str) -> None:
        """The request's KV blocks were freed; it will be recomputed from its first token (its token ids are
        kept). A proposer following the target's KV drops what it knew of the request's cache."""
        return None

    def on_request_finished(self, request_id: str, token_ids: Sequence[int]) -> None:
        return None

    def on_request_aborted(self, request_id: str) -> None:
        return None

    def bind_kv_cache(self, cache: ProposerKVCache) -> None:
        """Receive the KV cache allocated from ``needs.kv_cache`` (called once, before any request)."""
        return None

    def device_drafter(self, spec: DeviceDraftingSpec) -> DeviceDrafter | None:
        """A drafter the engine may run on the device after each verify step, or None (host ``propose`` only)."""
        return None


@dataclass(frozen=True)
class ProposerSpec:
    """How a plugin describes one method.

    method: the ``speculative_config["method"]`` string; the entry point's name must be the same
        (``tokenleap_plugins.testing.check_entry_point`` checks it).
    build: ``build(config, context) -> Proposer``; ``config`` is an instance of ``config_model`` (None without
        one), ``context`` a :class:`ProposerContext`.
    config_model: a pydantic model (``extra="forbid"``) of this method's own keys, or None when the
        method takes none. Common keys (method, num_speculative_tokens, model, ...) are validated by
        the engine and never reach it.
    default_num_speculative_tokens: used when the user gives no ``num_speculative_tokens``; a
        function of the validated config (suffix: the tree depth), or None to require the key.
    common_keys: the common keys beyond ``method``, ``num_speculative_tokens`` and ``disable_by_batch_size``
        that this method uses (``"model"``, ``"max_model_len"``, ``"draft_tensor_parallel_size"``, ...); the
        engine rejects the others when a user sets them, and passes these in ``ProposerContext.speculative``.
    requires_model: ``speculative_config["model"]`` must be given.
    preflight: ``preflight(config, context)``: checks that need no weights (a draft's vocabulary, positions,
        tokenizer), run before the target's weights load; raise ``ValueError`` naming the key and the value.
        ``context.target`` is None there.
    description: one line for ``tokenleap proposers``.
    """

    method: str
    build: Callable[[Any, ProposerContext], Proposer]
    config_model: type | None = None
    default_num_speculative_tokens: Callable[[Any], int] | None = None
    description: str = ""
    common_keys: frozenset[str] = frozenset()
    requires_model: bool = False
    preflight: Callable[[Any, ProposerContext], None] | None = None
