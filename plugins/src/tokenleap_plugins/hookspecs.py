"""The pluggy hook spec through which proposer packages register (project name "tokenleap").

A proposer package is one module with an entry point in the group ``tokenleap.proposers``; the
entry-point name is the ``method`` string users write in ``speculative_config``. The module
implements the hook below::

    from tokenleap_plugins import ProposerSpec, hookimpl

    @hookimpl
    def tokenleap_register_proposers():
        return [ProposerSpec(method="ngram", config_model=NgramConfig, build=NgramProposer)]
"""

from __future__ import annotations

import pluggy

PROJECT_NAME = "tokenleap"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


class ProposerHookSpec:
    @hookspec
    def tokenleap_register_proposers(self):  # type: ignore[empty-body]
        """Return a list of :class:`tokenleap_plugins.ProposerSpec`, one per method this plugin provides."""
