"""The error a tensor-parallel engine ends with (importable without torch.distributed: the proposer driver lets
it through as it is)."""


class TensorParallelWorkerError(RuntimeError):
    """A tensor-parallel rank died or a collective failed: the engine cannot run further steps."""
