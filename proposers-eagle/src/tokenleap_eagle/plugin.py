"""The entry points of methods ``eagle`` and ``eagle3`` (group ``tokenleap.proposers``)."""

from functools import partial

from tokenleap_plugins import ProposerSpec, hookimpl

from tokenleap_eagle.proposer import EagleConfig, EagleProposer
from tokenleap_eagle.tensor_parallel import check_head_runs_whole

_COMMON = frozenset({"model", "max_model_len", "draft_tensor_parallel_size"})


def _preflight(method: str, config, ctx) -> None:
    check_head_runs_whole(method, ctx)

EAGLE = ProposerSpec(
    method="eagle", build=partial(EagleProposer, "eagle"), config_model=EagleConfig,
    description="EAGLE-1/2 head: one decoder layer on the target's last hidden state, the target's LM head",
    common_keys=_COMMON, requires_model=True, preflight=partial(_preflight, "eagle"),
)
EAGLE3 = ProposerSpec(
    method="eagle3", build=partial(EagleProposer, "eagle3"), config_model=EagleConfig,
    description="EAGLE-3 head: one decoder layer on three of the target's hidden states, its own draft vocabulary",
    common_keys=_COMMON, requires_model=True, preflight=partial(_preflight, "eagle3"),
)


@hookimpl
def tokenleap_register_proposers():
    return [EAGLE, EAGLE3]
