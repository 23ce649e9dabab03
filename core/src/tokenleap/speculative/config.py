"""Validating speculative_config before any work starts: common keys here, method keys by the
method's own model, method resolved through the plugin manager."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pydantic
from tokenleap_plugins import ProposerManager, ProposerSpec, SpeculativeSettings, validate_method_config

from tokenleap.config import COMMON_SPECULATIVE_KEYS, UNIVERSAL_SPECULATIVE_KEYS, SpeculativeCommonConfig


@dataclass(frozen=True)
class ResolvedSpeculativeConfig:
    common: SpeculativeCommonConfig
    spec: ProposerSpec
    method_config: Any  # the method's own pydantic model instance, or None
    num_speculative_tokens: int

    @property
    def settings(self) -> SpeculativeSettings:
        """The common keys the method uses, as the proposer receives them."""
        c = self.common
        return SpeculativeSettings(model=c.model, max_model_len=c.max_model_len,
                                   draft_tensor_parallel_size=c.draft_tensor_parallel_size or 1,
                                   parallel_drafting=c.parallel_drafting,
                                   disable_padded_drafter_batch=c.disable_padded_drafter_batch)


def resolve_speculative_config(raw: dict[str, Any], manager: ProposerManager) -> ResolvedSpeculativeConfig:
    if not isinstance(raw, dict):
        raise ValueError(f"speculative_config={raw!r} must be a dict such as {{'method': 'ngram', ...}}")
    if "method" not in raw:
        raise ValueError(
            f"speculative_config={raw!r} has no 'method'; e.g. {{'method': 'ngram', 'num_speculative_tokens': 5}}"
        )
    common_raw = {k: v for k, v in raw.items() if k in COMMON_SPECULATIVE_KEYS}
    method_raw = {k: v for k, v in raw.items() if k not in COMMON_SPECULATIVE_KEYS}
    try:
        common = SpeculativeCommonConfig.model_validate(common_raw)
    except pydantic.ValidationError as exc:
        raise ValueError(_describe(exc)) from None
    spec = manager.load(common.method)  # unknown method: lists installed ones and the package to install
    _check_common_keys(spec, common_raw)
    method_config = validate_method_config(spec, method_raw, COMMON_SPECULATIVE_KEYS)
    k = common.num_speculative_tokens
    if k is None:
        if spec.default_num_speculative_tokens is None:
            raise ValueError(
                f"speculative_config.num_speculative_tokens is required for method {common.method!r} "
                f"(an int from 1 to 32)"
            )
        k = int(spec.default_num_speculative_tokens(method_config))
    return ResolvedSpeculativeConfig(common, spec, method_config, k)


def _check_common_keys(spec: ProposerSpec, given: dict[str, Any]) -> None:
    """A common key that means nothing to the method fails (``"model"`` for ngram, say), naming the keys it takes.
    A model-based method without ``model`` fails too."""
    usable = UNIVERSAL_SPECULATIVE_KEYS | set(spec.common_keys)
    defaults = SpeculativeCommonConfig.model_fields
    unused = sorted(k for k, v in given.items() if k not in usable and v != defaults[k].default)
    if unused:
        raise ValueError(
            f"speculative_config: key(s) {unused} mean nothing to method {spec.method!r} "
            f"(given {', '.join(f'{k}={given[k]!r}' for k in unused)}); its common keys are {sorted(usable)}"
        )
    if spec.requires_model and not given.get("model"):
        raise ValueError(
            f"speculative_config.model is required for method {spec.method!r}: the draft or head to load "
            f"(a local folder, a .gguf file or a model alias)"
        )


def _describe(exc: pydantic.ValidationError) -> str:
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "<root>"
        parts.append(f"speculative_config.{field}={err.get('input')!r}: {err['msg']}")
    return "; ".join(parts)
