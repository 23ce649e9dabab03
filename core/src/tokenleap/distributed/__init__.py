"""Tensor parallelism over torch.distributed (gloo on CPU, NCCL on CUDA): see docs/tensor-parallel.md."""


def run_worker() -> None:
    """Serve as a tensor-parallel worker (RANK >= 1 of WORLD_SIZE, from the environment) until rank 0 stops."""
    from tokenleap.distributed.worker import run_worker as run

    run()


__all__ = ["run_worker"]
