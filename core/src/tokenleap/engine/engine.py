"""The step loop: schedule -> forward -> verify -> update -> propose."""

from __future__ import annotations

import time
from dataclasses import replace

import structlog
from tokenleap_plugins import ProposerManager, VerifiedRequest

from tokenleap.config import EngineConfig
from tokenleap.engine import setup
from tokenleap.engine.cuda_graphs import DecodeGraphs, graph_batch_sizes, prefill_buckets
from tokenleap.engine.detokenizer import init_offsets, text_decoder
from tokenleap.engine.kv_cache import BlockManager
from tokenleap.engine.model_runner import LaunchedStep, ModelRunner, StepResult
from tokenleap.engine.output_processor import append_tokens, flush_text, text_waits
from tokenleap.engine.request import Request, RequestStatus
from tokenleap.engine.scheduler import ScheduledRequest, Scheduler
from tokenleap.metrics import EngineCounters
from tokenleap.model.hub import resolve_model
from tokenleap.model.loader import read_arch
from tokenleap.speculative.building import (
    bind_proposer_kv_cache,
    build_proposer,
    device_drafter,
    preflight,
    proposer_context,
    proposer_kv_bytes_per_block,
    target_handles,
)
from tokenleap.speculative.config import ResolvedSpeculativeConfig, resolve_speculative_config
from tokenleap.speculative.model_loader import EngineModelLoader
from tokenleap.speculative.proposing import ProposerDriver, StepEntry
from tokenleap.structured import constraints

log = structlog.get_logger("tokenleap")


class Engine:
    def __init__(self, cfg: EngineConfig, proposer_manager: ProposerManager | None = None) -> None:
        self.cfg = cfg
        # Everything that can be wrong with the configuration fails before weights are loaded.
        self.spec_cfg: ResolvedSpeculativeConfig | None = None
        if cfg.speculative_config is not None:
            self.spec_cfg = resolve_speculative_config(cfg.speculative_config, proposer_manager or ProposerManager())
        self.device = setup.pick_device(cfg)
        self.backend = setup.pick_backend(cfg, self.device)
        model_path = resolve_model(cfg.model)
        context = None
        models = EngineModelLoader(cfg, self.device, self.backend)  # a proposer's own model, as the target runs
        if self.spec_cfg is not None:  # the method's own checks (a draft's vocabulary, ...) before any weights
            arch = read_arch(model_path) if cfg.load_format != "dummy" else setup.dummy_arch(model_path)
            context = proposer_context(self.spec_cfg, arch, cfg.max_model_len or arch.max_position_embeddings,
                                       cfg.seed, self.device, "", cfg.block_size, self.backend, model_path,
                                       cfg.load_format, models,
                                       cuda_graphs=not cfg.enforce_eager and cfg.tensor_parallel_size == 1)
            preflight(self.spec_cfg, context)

        self.tensor_parallel = None  # rank 0's handle on the workers when tensor_parallel_size > 1
        if cfg.tensor_parallel_size > 1:
            from tokenleap.distributed.launcher import TensorParallelGroup

            self.tensor_parallel = TensorParallelGroup(cfg, model_path, self.device, self.backend)
            loaded = self.tensor_parallel.loaded
        else:
            loaded = setup.load_model(cfg, model_path, self.device, cfg.max_model_len, self.backend)
        self.model, self.arch, self.tokenizer = loaded.model, loaded.arch, loaded.tokenizer
        kv_arch = self.arch if self.tensor_parallel is None else self.tensor_parallel.shard_arch  # this rank's
        self.decode = text_decoder(self.tokenizer)
        k = self.spec_cfg.num_speculative_tokens if self.spec_cfg else 0
        max_len = cfg.max_model_len or self.arch.max_position_embeddings
        self.max_num_batched_tokens = cfg.max_num_batched_tokens or max(2048, min(max_len, 8192))
        # The proposer is built (and loads its own weights) before the KV cache is sized: its memory, and the KV
        # cache it asks for, come out of the same budget.
        proposer = None
        if context is not None:
            handles = (target_handles(self.model, self.tokenizer) if self.tensor_parallel is None
                       else self.tensor_parallel.target_handles(self.tokenizer))  # (these run on every rank)
            models.target_loaded(loaded.dtype, self.tensor_parallel)
            context = replace(context, dtype=str(loaded.dtype).removeprefix("torch."), target=handles)
            proposer = build_proposer(self.spec_cfg, context)
            setup.warn_if_rows_vary(self.backend, loaded.dtype)
        extra = proposer_kv_bytes_per_block(proposer, cfg.block_size, loaded.dtype, models) if proposer else 0
        num_blocks = setup.num_kv_blocks(cfg, kv_arch, loaded.dtype, self.device, self.max_num_batched_tokens,
                                         max_len, extra)
        lookahead = k if proposer is not None and proposer.needs.kv_cache is not None else 0
        capacity = (num_blocks - 1) * cfg.block_size - (k + 1) - lookahead
        if max_len > capacity:
            if cfg.max_model_len is not None:
                raise ValueError(
                    f"max_model_len={cfg.max_model_len} does not fit in the KV cache ({num_blocks - 1} blocks of "
                    f"{cfg.block_size} tokens = {capacity} tokens with {k} speculative slots); lower max_model_len "
                    f"or give more KV memory (kv_cache_memory_bytes / gpu_memory_utilization)"
                )
            log.warning("max_model_len lowered to fit the KV cache", max_model_len=capacity, was=max_len)
            max_len = capacity
        self.max_model_len = max_len
        self.blocks = BlockManager(num_blocks, cfg.block_size, cfg.enable_prefix_caching)
        self.scheduler = Scheduler(self.blocks, cfg.max_num_seqs, self.max_num_batched_tokens,
                                   cfg.scheduling_policy, cfg.enable_chunked_prefill, lookahead_slots=lookahead)
        kv = setup.allocate_kv_caches(kv_arch, num_blocks, cfg.block_size, loaded.dtype, self.device)
        if self.tensor_parallel is not None:
            self.tensor_parallel.allocate(num_blocks, cfg.block_size)
        self.driver: ProposerDriver | None = None
        hidden_layers: tuple[int, ...] = ()
        drafter = None  # drafts the next verify step on the device (verify steps launched ahead of the host)
        graphed = self.device.type == "cuda" and not cfg.enforce_eager and self.backend == "triton"
        if proposer is not None:
            bind_proposer_kv_cache(proposer, num_blocks, cfg.block_size, loaded.dtype, self.device, models)
            hidden_layers = tuple(proposer.needs.hidden_state_layers)
            if graphed and cfg.async_scheduling:
                drafter = device_drafter(proposer, max(graph_batch_sizes(cfg.max_num_seqs)), k, max_len,
                                         cfg.block_size, self.device, self.backend)
            common = self.spec_cfg.common
            self.driver = ProposerDriver(proposer, common.method, k, self.arch.vocab_size, max_len,
                                         common.disable_by_batch_size, common.max_model_len, cfg.block_size,
                                         common.draft_verification)
        max_blocks = -(-(max_len + 2 * (k + 1) + lookahead) // cfg.block_size)  # a verify step launched ahead: 2(k+1)
        graphs = None
        if graphed and self.tensor_parallel is None:  # TP steps run eagerly (docs/tensor-parallel.md)
            t0 = time.monotonic()
            graphs = DecodeGraphs(self.model, kv, cfg.max_num_seqs, [1, 1 + k], max_blocks, max_len, self.backend,
                                  self.device, prefill_query_lens=prefill_buckets(self.max_num_batched_tokens),
                                  drafter=drafter, block_size=cfg.block_size, hidden_state_layers=hidden_layers)
            graphs.capture()
            log.info("captured CUDA graphs", batch_sizes=graphs.batch_sizes, query_lens=graphs.query_lens,
                     prefill_query_lens=graphs.prefill_query_lens,
                     seconds=round(time.monotonic() - t0, 1))
        self.runner = ModelRunner(self.model, kv, cfg.block_size, max_blocks, max_len, self.device, self.backend,
                                  hidden_layers, graphs)
        if self.spec_cfg is not None:
            self.runner.draft_verification = self.spec_cfg.common.draft_verification
            self.runner.draft_len_limit = self.driver.draft_len_limit
        # with a proposer, steps of constrained requests are verified synchronously (MaskedDecode.verify; masked
        # decode steps launched ahead between n-gram verify steps measured slower: docs/sampling.md)
        self.runner.masked_decode = self.driver is None
        self.counters = EngineCounters()
        self.requests: dict[str, Request] = {}
        self._in_flight: LaunchedStep | None = None  # a step launched ahead, read back by the next step()
        # a step launched ahead whose requests all ended before it was read: nobody needs its result, so the
        # requests are handed back without waiting for it; the next launch waits for it (its staged inputs and
        # read-back buffer are reused by the steps after it)
        self._orphan: LaunchedStep | None = None
        self._last_log = time.monotonic()
        log.info("engine ready", model=cfg.model, device=str(self.device), dtype=str(loaded.dtype),
                 attention=self.backend, kv_blocks=num_blocks, max_model_len=max_len,
                 speculative=self.spec_cfg.common.method if self.spec_cfg else None, k=k,
                 device_drafting=graphs is not None and graphs.drafter is not None)

    @property
    def num_speculative_tokens(self) -> int:
        return self.spec_cfg.num_speculative_tokens if self.spec_cfg else 0

    def add_request(self, request: Request) -> None:
        if request.request_id in self.requests:
            raise ValueError(f"request_id={request.request_id!r} is already in the engine")
        request.constraints = constraints.for_request(request.params, self.tokenizer, self.arch.vocab_size,
                                                      sorted(request.eos_token_ids))
        init_offsets(request)
        self.requests[request.request_id] = request
        self.scheduler.add(request)
        self.counters.prompt_tokens += request.num_prompt_tokens
        if self.driver is not None:
            self.driver.added(request)

    def abort_request(self, request_id: str) -> None:
        req = self.requests.get(request_id)
        if req is None or req.status.finished:
            return
        req.status, req.finish_reason = RequestStatus.FINISHED_ABORTED, "abort"
        self._retire(req)
        self._drop_in_flight_if_done()

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    def step(self) -> list[Request]:
        """Run one engine step; returns the requests that finished in it.

        With ``async_scheduling``, a greedy decode step is followed on the device by the next one before the host
        reads it back: step N + 1 is prepared and launched while the GPU runs step N, and the next call returns
        step N + 1's results. Requests that finish in step N simply ignore step N + 1. Under constraints (a
        grammar, logit_bias, ...) step N + 1's forward is launched the same way, fed step N's constrained token on
        the device; its own constrained argmax is launched in the next call, once step N's tokens advanced the
        matchers and before step N + 2 is launched behind it (model_runner's docstring; without a proposer). A verify
        step is followed the same way when the proposer drafts on the device (``DeviceDrafter``: n-gram's prompt
        lookup, the MLP speculator's stages, an EAGLE head's catch-up and chain). Otherwise (a proposer, which
        needs step N's tokens first) step N + 1 is launched as soon as step N's tokens and drafts are in, and step
        N's text is made while it runs."""
        launched, self._in_flight = self._in_flight, None
        if launched is None:
            launched = self._schedule_and_launch()
            if launched is None:
                if self.scheduler.waiting and not self.scheduler.running:
                    head = self.scheduler.waiting[0]
                    raise RuntimeError(
                        f"request {head.request_id!r} ({head.num_tokens} tokens) cannot be scheduled: the KV cache "
                        f"has {self.blocks.num_free_blocks} free blocks of {self.blocks.block_size} tokens"
                    )
                return []
        now = time.monotonic()
        q = self._ahead_query_len(launched)
        if q is not None:
            ahead = self.scheduler.schedule_ahead(launched.scheduled, q)
            if ahead is not None:
                self._in_flight = self.runner.launch(ahead, ahead_of=launched, q=q)
        finished = self._apply(launched.scheduled, launched.wait(), now)
        if self._in_flight is None and self._may_launch_next():
            self._in_flight = self._schedule_and_launch()
        for s in launched.scheduled:  # the text append_tokens left (no stop strings), while the next step runs
            if text_waits(s.request):
                flush_text(s.request, self.decode)
        self._drop_in_flight_if_done()
        self._maybe_log()
        return finished

    def _schedule_and_launch(self) -> LaunchedStep | None:
        sched = self.scheduler.schedule()
        if not sched.scheduled:
            return None
        self.counters.num_preemptions += len(sched.preempted)
        if self.driver is not None:
            for req in sched.preempted:
                self.driver.preempted(req)
        self._settle_orphan()
        return self.runner.launch(sched.scheduled)

    def _may_launch_next(self) -> bool:
        """Launch the next step before making this step's text (the GPU runs while the host decodes): when
        it continues every running request, all of them decoding greedy (plain, or a decode step under
        constraints), with nobody waiting (so that new requests still get in when step() is next called), on
        captured graphs, so it stays in flight."""
        running = self.scheduler.running
        return (bool(running) and not self.scheduler.waiting
                and all(r.is_decoding and self.runner.stays_in_flight(r) for r in running))

    def _ahead_query_len(self, launched: LaunchedStep) -> int | None:
        """Tokens per request of a step that may be launched behind ``launched`` (a greedy step in flight, none of
        whose requests is sure to end in it), or None: 1 (decode) behind a decode step without a proposer (under
        constraints too: ``LaunchedStep.masked``); 1 + k (verify, drafted on the device) behind a decode or verify
        step when the proposer offers a device drafter, the graphs draft for it and drafting is not switched off by
        the batch size. With a proposer, steps under constraints sample synchronously (never in flight)."""
        if not self.cfg.async_scheduling or not (launched.is_greedy_decode or launched.is_greedy_verify):
            return None
        if not all(s.request.num_output_tokens + 1 < s.request.max_tokens
                   and s.request.num_tokens + 1 < self.max_model_len for s in launched.scheduled):
            return None
        if self.driver is None:
            return 1 if launched.is_greedy_decode else None
        graphs, limit = self.runner.graphs, self.driver.disable_by_batch_size
        if graphs is None or graphs.drafter is None or (limit is not None and len(launched.scheduled) >= limit):
            return None
        return 1 + self.num_speculative_tokens

    def _drop_in_flight_if_done(self) -> None:
        """A step launched ahead whose requests all ended has nothing to give: drop it without waiting (the
        finished requests go back to the caller while the GPU still runs it; the next launch waits for it)."""
        if self._in_flight is not None and all(s.request.status.finished for s in self._in_flight.scheduled):
            assert self._orphan is None, "a step was launched after the last dropped one, which settled it"
            self._orphan, self._in_flight = self._in_flight, None

    def _settle_orphan(self) -> None:
        """Wait for a dropped step still on the device before launching anything: the launch after it writes the
        staging buffer its inputs were copied from, and the step after that its read-back buffer."""
        if self._orphan is not None:
            self._orphan.wait()
            self._orphan = None

    def _apply(self, scheduled: list[ScheduledRequest], result: StepResult, now: float) -> list[Request]:
        """Account a step's results to its requests; returns those that finished. Requests that ended before
        (in the step this one was launched ahead of, or aborted) are skipped. The text of requests without
        stop strings is left to ``flush_text``. The proposer drafts for the next step unless it is in flight."""
        self.counters.num_steps += 1
        verified: list[VerifiedRequest] = []
        finished: list[Request] = []
        entries: list[StepEntry] = []
        for s in scheduled:
            req = s.request
            if req.status.finished:
                continue
            if req.metrics.first_scheduled_time is None:
                req.metrics.first_scheduled_time = now
            start = req.num_computed_tokens
            sampled = result.sampled.get(req.request_id)
            if sampled is None:
                kept = s.num_new_tokens
                req.num_computed_tokens += kept
            else:
                num_accepted = len(sampled.token_ids) - 1
                kept = s.num_new_tokens + num_accepted
                req.num_computed_tokens += kept
                new_tokens = append_tokens(req, sampled, self.decode, self.max_model_len)
                if req.constraints is not None:
                    req.constraints.accept(new_tokens)
                num_drafts = sampled.num_draft_tokens  # the host's, or the device's (drafted there)
                self._count_step(req, num_drafts, num_accepted, len(new_tokens))
                verified.append(VerifiedRequest(req.request_id, num_drafts, num_accepted, new_tokens))
            # (a stop inside the accepted run truncates the tokens: positions past the last one are not reported)
            entries.append(StepEntry(req, start, min(kept, req.num_tokens - start), s.num_query_tokens - kept,
                                     not req.status.finished))
            req.spec_token_ids, req.spec_probs = [], None
            self.blocks.cache_full_blocks(req.block_ids, req.block_hashes, req.all_token_ids,
                                          req.num_computed_tokens)
            if req.status.finished:
                finished.append(req)
        if self.driver is not None:
            self.driver.verified(verified)
            if self._in_flight is None:
                # (a step already in flight drafted on the device; drafts made now would be replaced, unused, when
                # that step is applied). Finishing requests are still in the batch of a proposer that follows every
                # step: their last tokens' KV goes into blocks the prefix cache keeps.
                self.driver.propose(entries, self.scheduler.running, result)
        for req in finished:
            self._retire(req)
        return finished

    def _count_step(self, req: Request, num_drafts: int, num_accepted: int, num_kept: int) -> None:
        now = time.monotonic()
        if req.metrics.first_token_time is None:
            req.metrics.first_token_time = now
            self.counters.ttft.observe(now - req.metrics.arrival_time)
        req.metrics.num_generation_steps += 1
        self.counters.generation_tokens += num_kept
        self.counters.spec.observe(num_drafts, num_accepted)
        req.metrics.spec_decode.observe(num_drafts, num_accepted)

    def _retire(self, req: Request) -> None:
        self.scheduler.finish(req)
        req.metrics.finished_time = time.monotonic()
        self.counters.finished[req.finish_reason] = self.counters.finished.get(req.finish_reason, 0) + 1
        if req.finish_reason != "abort":
            self.counters.e2e.observe(req.metrics.finished_time - req.metrics.arrival_time)
        if self.driver is not None:
            self.driver.finished(req)
        del self.requests[req.request_id]

    def metrics(self):
        return self.counters.snapshot(len(self.scheduler.running), len(self.scheduler.waiting), self.blocks.usage,
                                      self.blocks.prefix_queries, self.blocks.prefix_hits)

    def _maybe_log(self) -> None:
        now = time.monotonic()
        if self.cfg.disable_log_stats or now - self._last_log < self.cfg.log_stats_interval_s:
            return
        self._last_log = now
        spec = self.counters.spec
        fields = dict(running=len(self.scheduler.running), waiting=len(self.scheduler.waiting),
                      kv_usage=round(self.blocks.usage, 3), generation_tokens=self.counters.generation_tokens)
        if self.driver is not None:
            fields.update(mean_acceptance_length=round(spec.mean_acceptance_length, 3),
                          per_position_acceptance=[round(r, 3) for r in spec.per_position_acceptance_rate],
                          draft_acceptance_rate=round(spec.draft_acceptance_rate, 3))
        log.info("engine stats", **fields)

