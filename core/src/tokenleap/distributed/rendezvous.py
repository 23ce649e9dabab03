"""Joining the ranks through torch.distributed's standard rendezvous variables (MASTER_ADDR, MASTER_PORT,
RANK, WORLD_SIZE; LOCAL_RANK picks the GPU), over a TCPStore that rank 0 hosts.

Before the process group forms, the store carries the start-up: rank 0 writes the backend and the engine
config; each worker writes its status after loading its shard ("ok" or the error), which rank 0 waits for
while watching its local workers' liveness. Then all ranks form the group (gloo on CPU, NCCL on CUDA).
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch.distributed as dist

# Collectives wait this long: a worker idles in a broadcast between the user's generate calls. Failures are
# seen sooner: a dead peer closes its sockets (gloo raises at once) and rank 0 polls its workers' liveness.
COLLECTIVE_TIMEOUT = timedelta(days=7)
STARTUP_TIMEOUT = timedelta(seconds=float(os.environ.get("TOKENLEAP_TP_STARTUP_TIMEOUT_S", "600")))
BACKEND_KEY, CONFIG_KEY = "tokenleap/backend", "tokenleap/config"


def status_key(rank: int) -> str:
    return f"tokenleap/status/{rank}"


def env_int(name: str) -> int:
    value = os.environ.get(name)
    if value is None or not value.strip().isdigit():
        raise ValueError(f"environment variable {name}={value!r} must be a non-negative integer "
                         f"(the torch.distributed rendezvous: MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE)")
    return int(value)


def host_store(addr: str, port: int, world_size: int) -> dist.TCPStore:
    """Rank 0's store (port 0: any free port, read back from ``store.port``)."""
    return dist.TCPStore(addr, port, world_size, is_master=True, timeout=STARTUP_TIMEOUT, wait_for_workers=False)


def join_store(world_size: int) -> dist.TCPStore:
    """A worker's client of rank 0's store, from MASTER_ADDR / MASTER_PORT."""
    addr = os.environ.get("MASTER_ADDR")
    if not addr:
        raise ValueError("environment variable MASTER_ADDR is not set: the address of rank 0's host")
    return dist.TCPStore(addr, env_int("MASTER_PORT"), world_size, is_master=False, timeout=STARTUP_TIMEOUT)


def check_no_group() -> None:
    if dist.is_initialized():
        raise RuntimeError("this process already has a torch.distributed process group: tokenleap runs one "
                           "tensor-parallel engine per process at a time (delete the other LLM first)")


def form_group(store: dist.TCPStore, backend: str, rank: int, world_size: int) -> None:
    check_no_group()
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=COLLECTIVE_TIMEOUT)
