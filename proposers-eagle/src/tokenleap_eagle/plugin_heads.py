"""Entry points of methods ``mlp_speculator`` (also ``mlp``) and ``mtp`` (group ``tokenleap.proposers``)."""

from tokenleap_plugins import ProposerSpec, hookimpl


def _build_mlp(config, ctx):
    from tokenleap_eagle.mlp_speculator.proposer import MLPSpeculatorProposer

    return MLPSpeculatorProposer(config, ctx)


def _preflight_mlp(config, ctx):
    """k, hidden size and vocabulary against the speculator's config.json, before any weights load."""
    from tokenleap_eagle.mlp_speculator.loader import read_config, resolve_speculator
    from tokenleap_eagle.mlp_speculator.proposer import check_fits
    from tokenleap_eagle.tensor_parallel import check_head_runs_whole

    check_head_runs_whole("mlp_speculator", ctx)
    name = ctx.speculative.model
    check_fits(read_config(resolve_speculator(name)), ctx, repr(name))


def _preflight_mtp(config, ctx):
    """The target's checkpoint carries an MTP layer (config.json and tensor names only)."""
    from tokenleap_eagle.mtp.layouts import find_mtp_layer
    from tokenleap_eagle.tensor_parallel import check_head_runs_whole

    check_head_runs_whole("mtp", ctx)
    if ctx.target_load_format != "dummy":
        find_mtp_layer(ctx.target_model_path)


def _build_mtp(config, ctx):
    from tokenleap_eagle.mtp.proposer import MTPProposer

    return MTPProposer(config, ctx)


_MLP = dict(
    build=_build_mlp,
    common_keys=frozenset({"model", "draft_tensor_parallel_size"}),
    requires_model=True,
    preflight=_preflight_mlp,
    description="IBM's MLP speculator (fms-extras / vLLM layout): an MLP chain on the target's last hidden state",
)
SPECS = [
    ProposerSpec(method="mlp_speculator", **_MLP),
    ProposerSpec(method="mlp", **_MLP),
    ProposerSpec(
        method="mtp",
        build=_build_mtp,
        preflight=_preflight_mtp,
        default_num_speculative_tokens=lambda config: 1,  # vLLM's default: one draft per MTP layer (1)
        common_keys=frozenset({"max_model_len", "draft_tensor_parallel_size"}),
        description="the multi-token-prediction layer the target's own checkpoint carries (MiMo, DeepSeek-V3 naming)",
    ),
]


@hookimpl
def tokenleap_register_proposers():
    return SPECS
