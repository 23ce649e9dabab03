"""Heads under tensor parallelism: a head (EAGLE, MLP speculator, MTP layer) runs whole on the engine's process
(rank 0) beside a target of any ``tensor_parallel_size``, reading the target's hidden states (complete on every
rank) and calling the target's embedding and LM head through ``TargetHandles`` (which run on every rank). Sharding
the head itself (``draft_tensor_parallel_size`` equal to the target's) is refused: a head is one layer, small next
to the target, and sharded it would add collectives to each of its k draft steps."""

from __future__ import annotations

from tokenleap_plugins import ProposerContext


def check_head_runs_whole(method: str, context: ProposerContext) -> None:
    """Preflight: ``draft_tensor_parallel_size`` must be 1 for a head."""
    n = context.speculative.draft_tensor_parallel_size
    if n != 1:
        raise ValueError(
            f"speculative_config.draft_tensor_parallel_size={n}: method {method!r} runs its head whole on the "
            f"engine's process beside a target of any tensor_parallel_size (a head is one layer, not worth "
            f"sharding); allowed: 1"
        )
