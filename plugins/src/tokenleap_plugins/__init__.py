"""The contract between the tokenleap engine and every speculative-decoding proposer.

Importing this package never imports torch: a proposer that needs tensors imports torch itself.
"""

from tokenleap_plugins.hookspecs import hookimpl, hookspec
from tokenleap_plugins.manager import (
    ENTRY_POINT_GROUP,
    KNOWN_PACKAGES,
    PLUGINS_ENV_VAR,
    InstalledMethod,
    ProposerConfigError,
    ProposerManager,
    UnknownMethodError,
    validate_method_config,
)
from tokenleap_plugins.proposer import (
    ComputedTokens,
    DeviceDrafter,
    DeviceDraftingSpec,
    DeviceDraftStep,
    Drafts,
    KVCacheNeeds,
    ModelLoader,
    ProposeBatch,
    Proposer,
    ProposerBase,
    ProposerContext,
    ProposeRequest,
    ProposerKVCache,
    ProposerNeeds,
    ProposerSpec,
    SamplingInfo,
    SpeculativeSettings,
    TargetHandles,
    VerifiedRequest,
)

__all__ = [
    "ComputedTokens",
    "DeviceDrafter",
    "DeviceDraftingSpec",
    "DeviceDraftStep",
    "ProposerKVCache",
    "SamplingInfo",
    "SpeculativeSettings",
    "TargetHandles",
    "ENTRY_POINT_GROUP",
    "KNOWN_PACKAGES",
    "PLUGINS_ENV_VAR",
    "Drafts",
    "InstalledMethod",
    "KVCacheNeeds",
    "ModelLoader",
    "ProposerBase",
    "ProposerConfigError",
    "validate_method_config",
    "ProposeBatch",
    "ProposeRequest",
    "Proposer",
    "ProposerContext",
    "ProposerManager",
    "ProposerNeeds",
    "ProposerSpec",
    "UnknownMethodError",
    "VerifiedRequest",
    "hookimpl",
    "hookspec",
]
