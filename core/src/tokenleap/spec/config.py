"""Validating speculative_config before any work starts: common keys here, method keys by the
method's own model, method resolved through the plugin manager."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pydantic
from tokenleap_plugins import ProposerManager, ProposerSpec, validate_method_config

from tokenleap.config import COMMON_SPECULATIVE_KEYS, SpeculativeCommonConfig


@dataclass(frozen=True)
class ResolvedSpeculativeConfig:
    common: SpeculativeCommonConfig
    spec: ProposerSpec
    method_config: Any  # the method's own pydantic model instance, or None
    num_speculative_tokens: int


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


def _describe(exc: pydantic.ValidationError) -> str:
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "<root>"
        parts.append(f"speculative_config.{field}={err.get('input')!r}: {err['msg']}")
    return "; ".join(parts)
