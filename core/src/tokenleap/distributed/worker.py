"""A tensor-parallel worker (ranks 1..N-1): joins rank 0, loads its shard, then serves rank 0's commands
(forward over the broadcast flat batch, logits rows, embedding rows, KV cache allocation) until told to stop. It
holds the target's shard and, when a proposer's model runs sharded (``draft_tensor_parallel_size`` equal to the
target's), that model's shard too (command LOAD), each with its own paged KV cache; every command names its model.

Started by the engine (``python -m tokenleap.distributed.worker`` with the rendezvous variables set), or on
another host by the user, the same way (see docs/tensor-parallel.md). Exits when rank 0 goes away: its
sockets close (the collective raises) and, for a local worker, a thread watches the parent process.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from tokenleap.distributed import protocol, rendezvous

PARENT_ENV = "TOKENLEAP_TP_PARENT"  # pid of the engine's process, for workers it started


def _exit_with_parent(parent: int) -> None:
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="tokenleap-parent-watch", daemon=True).start()


def run_worker() -> None:
    """Serve as rank RANK (>= 1) of WORLD_SIZE until rank 0 stops the engine; returns then."""
    rank, world = rendezvous.env_int("RANK"), rendezvous.env_int("WORLD_SIZE")
    if rank == 0 or rank >= world:
        raise ValueError(f"a worker's RANK must be in 1..WORLD_SIZE-1 (WORLD_SIZE={world}), got RANK={rank}; "
                         f"rank 0 is the process that creates the LLM")
    if os.environ.get(PARENT_ENV):
        _exit_with_parent(int(os.environ[PARENT_ENV]))
    store = rendezvous.join_store(world)
    backend = store.get(rendezvous.BACKEND_KEY).decode()
    try:
        cfg, device, attn = _setup(store, backend, rank, world)
        target = _load_shard(cfg, cfg.model, device, attn, rank, world)
    except BaseException:
        store.set(rendezvous.status_key(rank), traceback.format_exc())
        raise
    store.set(rendezvous.status_key(rank), "ok")
    rendezvous.form_group(store, backend, rank, world)
    try:
        _serve(Worker(cfg, device, attn, rank, world, target))
    finally:
        dist.destroy_process_group()


def _setup(store, backend: str, rank: int, world: int):
    from tokenleap.config import EngineConfig
    from tokenleap.engine.setup import pick_backend

    cfg = EngineConfig.model_validate_json(store.get(rendezvous.CONFIG_KEY))
    if backend == "nccl":
        local = int(os.environ.get("LOCAL_RANK", rank))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))  # the ranks share the host's cores
    return cfg, device, pick_backend(cfg, device)


def _load_shard(cfg, model: str, device: torch.device, attn: str, rank: int, world: int) -> Served:
    """This rank's shard of the checkpoint ``model`` under ``cfg``'s load settings."""
    from tokenleap.distributed.shard_loader import load_shard
    from tokenleap.model.hub import resolve_model

    loaded = load_shard(cfg, resolve_model(model, progress=False), device, attn, rank, world)
    return Served(loaded.model, loaded.dtype)


@dataclass
class Served:
    """A model this worker holds a shard of, and its shard of that model's paged KV cache."""

    model: object  # LlamaForCausalLM of shard shapes
    dtype: torch.dtype
    kv_caches: list = field(default_factory=list)


@dataclass
class Worker:
    cfg: object  # EngineConfig
    device: torch.device
    attn: str
    rank: int
    world: int
    target: Served
    draft: Served | None = None

    def served(self, model: int) -> Served:
        served = self.target if model == protocol.TARGET else self.draft
        if served is None:
            raise RuntimeError(f"tensor-parallel worker rank {self.rank} got a command for the "
                               f"{protocol.MODEL_NAMES.get(model, model)} model, which it does not hold")
        return served

    def load(self, settings: dict) -> str:
        """Load this rank's shard of a proposer's model (``settings`` from ``TensorParallelGroup.load_draft``):
        "ok" or the traceback, reported to rank 0."""
        from tokenleap.distributed.shard_loader import proposer_model_config

        try:
            cfg = proposer_model_config(self.cfg, settings)
            self.draft = _load_shard(cfg, settings["path"], self.device, self.attn, self.rank, self.world)
        except Exception:
            return traceback.format_exc()
        return "ok"


@torch.inference_mode()
def _serve(worker: Worker) -> None:
    from tokenleap.engine.setup import allocate_kv_caches

    device = worker.device
    while True:
        header = protocol.recv_header(device)
        cmd = header[0]
        if cmd == protocol.FORWARD:
            served = worker.served(header[1])
            step = protocol.recv_forward(header, device, served.model.attention_backend)
            served.model(step.ids, step.positions, served.kv_caches, step.meta)
        elif cmd == protocol.LOGITS:
            served = worker.served(header[1])
            hidden = protocol.recv_hidden(header, served.dtype, device)
            served.model.tp.gather_logits(served.model.raw_logits(hidden))
        elif cmd == protocol.EMBED:
            served = worker.served(header[1])
            served.model.tp.embed(protocol.recv_ids(header, device), served.model.embed_tokens.weight)
        elif cmd == protocol.ALLOCATE:
            served = worker.served(header[1])
            served.kv_caches = allocate_kv_caches(served.model.cfg, header[2], header[3],
                                                  protocol.DTYPES[header[4]], device)
        elif cmd == protocol.LOAD:
            protocol.gather_status(worker.load(protocol.recv_load(header, device)))
        elif cmd == protocol.STOP:
            return
        else:
            raise RuntimeError(f"tensor-parallel worker got an unknown command {cmd} from rank 0")


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is rank 0's to handle; it stops the workers
    run_worker()
    sys.exit(0)
