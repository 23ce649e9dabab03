"""Rank 0's side of tensor parallelism: check the settings, start (or await) the workers, form the process
group, and shut everything down — on ``close``, when the engine is garbage-collected, or at exit.

The workers are ``python -m tokenleap.distributed.worker`` subprocesses of this process, unless the
rendezvous variables say the ranks were started elsewhere (WORLD_SIZE > 1 in the environment: this process is
RANK 0 of a group whose other ranks run ``tokenleap.distributed.run_worker`` on their hosts).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import weakref
from contextlib import contextmanager
from pathlib import Path

import structlog
import torch
import torch.distributed as dist
from tokenleap_plugins import TargetHandles

from tokenleap.config import EngineConfig
from tokenleap.distributed import protocol, rendezvous
from tokenleap.distributed.driver import TensorParallelModel, tensor_parallel_handles
from tokenleap.distributed.errors import TensorParallelWorkerError
from tokenleap.distributed.parallel import TensorParallel
from tokenleap.distributed.shard_loader import (
    build_shard,
    load_shard,
    proposer_model_config,
    read_arch,
    read_checkpoint,
)
from tokenleap.distributed.sharding import check_divisible, shard_arch
from tokenleap.distributed.worker import PARENT_ENV
from tokenleap.engine.setup import LoadedModel
from tokenleap.model.arch import ModelArchConfig
from tokenleap.model.hub import resolve_model

log = structlog.get_logger("tokenleap")
LOCAL_ADDR = "localhost"  # the store rank 0 hosts for workers it starts itself


class TensorParallelGroup:
    """The workers and the process group, as rank 0 holds them."""

    def __init__(self, cfg: EngineConfig, model_path: Path, device: torch.device, backend: str) -> None:
        tp = cfg.tensor_parallel_size
        arch = read_arch(model_path)  # cheap: the workers start while this process reads the weights
        ckpt = read_checkpoint(cfg, model_path, device, 0, tp) if arch is None else None
        check_divisible(arch or ckpt.arch, tp)  # before any process starts
        rendezvous.check_no_group()
        external = int(os.environ.get("WORLD_SIZE", "1")) > 1
        if external:
            _check_external_rank(tp)
        elif device.type == "cuda" and torch.cuda.device_count() < tp:
            raise ValueError(f"tensor_parallel_size={tp} needs {tp} GPUs; {torch.cuda.device_count()} visible")
        self.world_size, self.device, self.cfg, self.backend = tp, device, cfg, backend
        self.shard_arch: ModelArchConfig = shard_arch(arch or ckpt.arch, tp)
        self.procs: list[subprocess.Popen] = []
        self._state = {"formed": False, "failed": None}
        # (the finalizer holds only these: it must not keep the group alive)
        self._finalizer = weakref.finalize(self, _shutdown, self.procs, self._state, device)
        if external:
            store = rendezvous.host_store(os.environ.get("MASTER_ADDR", LOCAL_ADDR),
                                          rendezvous.env_int("MASTER_PORT"), tp)
        else:
            store = rendezvous.host_store(LOCAL_ADDR, 0, tp)
        store.set(rendezvous.BACKEND_KEY, "nccl" if device.type == "cuda" else "gloo")
        store.set(rendezvous.CONFIG_KEY, cfg.model_dump_json())
        if not external:
            self._start_local(store.port, tp)
        ckpt = ckpt or read_checkpoint(cfg, model_path, device, 0, tp)  # while the workers load theirs
        loaded = build_shard(cfg, ckpt, device, backend, 0, tp)
        self._await_workers(store, tp)
        rendezvous.form_group(store, "nccl" if device.type == "cuda" else "gloo", 0, tp)
        self._state["formed"] = True
        if device.type == "cuda" and self.procs:
            _start_nccl_watchdog(self.procs, self._state)
        self.tp = TensorParallel(0, tp, ckpt.arch.vocab_size, self.shard_arch.vocab_size)
        loaded.model.use_tensor_parallel(self.tp)
        self.loaded = LoadedModel(TensorParallelModel(loaded.model, ckpt.arch, self), ckpt.arch, ckpt.tokenizer,
                                  loaded.dtype)
        self.draft: TensorParallelModel | None = None  # a proposer's model loaded sharded (load_draft)
        log.info("tensor-parallel group formed", world_size=tp, external=external,
                 workers=[p.pid for p in self.procs])

    def _start_local(self, port: int, tp: int) -> None:
        for rank in range(1, tp):
            env = dict(os.environ, MASTER_ADDR=LOCAL_ADDR, MASTER_PORT=str(port), RANK=str(rank),
                       WORLD_SIZE=str(tp), LOCAL_RANK=str(rank), **{PARENT_ENV: str(os.getpid())})
            self.procs.append(subprocess.Popen([sys.executable, "-m", "tokenleap.distributed.worker"], env=env,
                                               stdin=subprocess.DEVNULL))

    def _await_workers(self, store: dist.TCPStore, tp: int) -> None:
        """Wait for every worker's load status, failing as soon as one reports an error or dies."""
        pending = set(range(1, tp))
        deadline = time.monotonic() + rendezvous.STARTUP_TIMEOUT.total_seconds()
        while pending:
            exited = any(p.poll() is not None for p in self.procs)  # before reading: a dead worker's last words
            for rank in sorted(pending):
                key = rendezvous.status_key(rank)
                if store.check([key]):
                    status = store.get(key).decode()
                    if status != "ok":
                        raise TensorParallelWorkerError(f"tensor-parallel worker rank {rank} failed to start:\n"
                                                        f"{status}")
                    pending.discard(rank)
            if exited:
                self.check_alive()  # raises, naming the worker and its exit code
            if time.monotonic() > deadline:
                raise TensorParallelWorkerError(
                    f"tensor-parallel workers {sorted(pending)} did not join within "
                    f"{rendezvous.STARTUP_TIMEOUT.total_seconds():.0f} s (TOKENLEAP_TP_STARTUP_TIMEOUT_S)")
            time.sleep(0.05)

    def check_alive(self) -> None:
        """Raise if a worker this process started has exited (cheap: one non-blocking wait per worker)."""
        if self._state["failed"]:
            raise TensorParallelWorkerError(self._state["failed"])
        for rank, p in enumerate(self.procs, start=1):
            if p.poll() is not None:
                self._state["failed"] = _dead_worker(rank, p)
                raise TensorParallelWorkerError(self._state["failed"])

    @contextmanager
    def collective(self):
        """Around rank 0's collectives: a failure (a peer's sockets closed) becomes a TensorParallelWorkerError
        naming the worker that died, when it was one of ours."""
        self.check_alive()
        try:
            yield
        except Exception as e:
            deadline = time.monotonic() + 2.0  # let a dying worker be reaped, to name it
            while time.monotonic() < deadline:
                try:
                    self.check_alive()
                except TensorParallelWorkerError as dead:
                    raise dead from e
                time.sleep(0.05)
            self._state["failed"] = f"a tensor-parallel collective failed: {e}"
            raise TensorParallelWorkerError(self._state["failed"]) from e

    def allocate(self, num_blocks: int, block_size: int, dtype: torch.dtype | None = None,
                 model: int = protocol.TARGET) -> None:
        """Every worker allocates its shard of ``model``'s KV cache: ``num_blocks`` blocks of ``dtype`` (default:
        the target's)."""
        dtype = dtype or self.loaded.dtype
        with self.collective():
            protocol.send_allocate(num_blocks, block_size, dtype, self.device, model)

    def target_handles(self, tokenizer) -> TargetHandles:
        """The target's embedding, LM head and final norm for proposers, run across the ranks."""
        return tensor_parallel_handles(self.loaded.model, tokenizer)

    def load_draft(self, path: str, load_format: str, dtype: torch.dtype, max_positions: int | None,
                   ) -> TensorParallelModel:
        """Every rank loads its shard of a proposer's model (command LOAD; the workers load theirs while rank 0
        loads its own); rank 0's, wrapped to run on all ranks. A rank that fails fails this call, naming it."""
        if self.draft is not None:
            raise RuntimeError("a tensor-parallel engine runs one sharded proposer model; one is already loaded")
        settings = {"path": path, "load_format": load_format, "dtype": str(dtype).removeprefix("torch."),
                    "max_positions": max_positions, "seed": self.cfg.seed}
        cfg = proposer_model_config(self.cfg, settings)
        error: BaseException | None = None
        with self.collective():
            protocol.send_load(settings, self.device, protocol.DRAFT)
            try:
                loaded = load_shard(cfg, resolve_model(path, progress=False), self.device, self.backend, 0,
                                    self.world_size)
            except Exception as e:  # the workers still report: every rank leaves the command together
                error = e
            statuses = protocol.gather_status("ok" if error is None else repr(error))
        if error is not None:
            raise error
        for rank, status in enumerate(statuses[1:], start=1):
            if status != "ok":
                raise TensorParallelWorkerError(f"tensor-parallel worker rank {rank} failed to load the proposer's "
                                                f"model {path!r}:\n{status}")
        self.draft = TensorParallelModel(loaded.model, loaded.arch, self, protocol.DRAFT)
        return self.draft

    def close(self) -> None:
        """Stop the workers and leave the process group (idempotent)."""
        self._finalizer()


def _dead_worker(rank: int, p: subprocess.Popen) -> str:
    return (f"tensor-parallel worker rank {rank} (pid {p.pid}) exited with code {p.returncode}; the engine cannot "
            f"continue (create a new LLM)")


def _check_external_rank(tp: int) -> None:
    rank, world = rendezvous.env_int("RANK"), rendezvous.env_int("WORLD_SIZE")
    if world != tp:
        raise ValueError(f"tensor_parallel_size={tp} but the environment says WORLD_SIZE={world}; they must match")
    if rank != 0:
        raise ValueError(f"this process has RANK={rank}: only rank 0 creates the LLM; other ranks run "
                         f"tokenleap.distributed.run_worker() (python -m tokenleap.distributed.worker)")


def _start_nccl_watchdog(procs: list[subprocess.Popen], state: dict) -> None:
    """NCCL does not notice a dead peer (gloo does: its sockets close): rank 0 would wait in the collective. A
    thread polls the workers and aborts the process group when one exits, which fails rank 0's pending
    collective; ``TensorParallelGroup.collective`` then names the dead worker. (Not run on CPU: untested here.)"""

    def watch() -> None:
        while state["formed"] and not state["failed"]:
            dead = [(rank, p) for rank, p in enumerate(procs, start=1) if p.poll() is not None]
            if dead:
                rank, p = dead[0]
                state["failed"] = _dead_worker(rank, p)
                dist.distributed_c10d._abort_process_group()
                return
            time.sleep(0.2)

    threading.Thread(target=watch, name="tokenleap-tp-watchdog", daemon=True).start()


def _shutdown(procs: list[subprocess.Popen], state: dict, device: torch.device) -> None:
    if state["formed"] and not state["failed"]:
        try:
            protocol.send_header([protocol.STOP], device)
        except Exception:  # a worker already gone: the others are stopped below
            pass
    deadline = time.monotonic() + 5.0
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    if state["formed"] and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # aborted by the watchdog: nothing left to leave
            pass
    state["formed"] = False
