"""A tensor-parallel worker (ranks 1..N-1): joins rank 0, loads its shard, then serves rank 0's commands
(forward over the broadcast flat batch, logits rows, KV cache allocation) until told to stop.

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
        model, kv_dtype, device = _load(store, backend, rank, world)
    except BaseException:
        store.set(rendezvous.status_key(rank), traceback.format_exc())
        raise
    store.set(rendezvous.status_key(rank), "ok")
    rendezvous.form_group(store, backend, rank, world)
    try:
        _serve(model, kv_dtype, device)
    finally:
        dist.destroy_process_group()


def _load(store, backend: str, rank: int, world: int):
    from tokenleap.config import EngineConfig
    from tokenleap.distributed.parallel import TensorParallel
    from tokenleap.distributed.shard_loader import build_shard, read_checkpoint
    from tokenleap.engine.setup import pick_backend
    from tokenleap.model.hub import resolve_model

    cfg = EngineConfig.model_validate_json(store.get(rendezvous.CONFIG_KEY))
    if backend == "nccl":
        local = int(os.environ.get("LOCAL_RANK", rank))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))  # the ranks share the host's cores
    attn = pick_backend(cfg, device)
    ckpt = read_checkpoint(cfg, resolve_model(cfg.model, progress=False), device, rank, world, need_tokenizer=False)
    loaded = build_shard(cfg, ckpt, device, attn, rank, world)
    loaded.model.use_tensor_parallel(TensorParallel(rank, world, loaded.arch.vocab_size, loaded.model.cfg.vocab_size))
    loaded.model.attention_backend = attn
    return loaded.model, loaded.dtype, device


@torch.inference_mode()
def _serve(model, dtype: torch.dtype, device: torch.device) -> None:
    from tokenleap.engine.setup import allocate_kv_caches

    kv_caches = []
    while True:
        header = protocol.recv_header(device)
        cmd = header[0]
        if cmd == protocol.FORWARD:
            step = protocol.recv_forward(header, device, model.attention_backend)
            model(step.ids, step.positions, kv_caches, step.meta)
        elif cmd == protocol.LOGITS:
            hidden = protocol.recv_hidden(header, dtype, device)
            model.tp.gather_logits(model.raw_logits(hidden))
        elif cmd == protocol.ALLOCATE:
            kv_caches = allocate_kv_caches(model.cfg, header[1], header[2], dtype, device)
        elif cmd == protocol.STOP:
            return
        else:
            raise RuntimeError(f"tensor-parallel worker got an unknown command {cmd} from rank 0")


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is rank 0's to handle; it stops the workers
    run_worker()
    sys.exit(0)
