"""Entry-point discovery of proposer plugins, the ``TOKENLEAP_PLUGINS`` allowlist, and config checks.

Only the requested method's entry point is imported. Plugins can also be registered directly
(``manager.register(module)``), which is how tests add a fake proposer without installing it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import pluggy
import pydantic

from tokenleap_plugins.hookspecs import PROJECT_NAME, ProposerHookSpec
from tokenleap_plugins.proposer import ProposerSpec

ENTRY_POINT_GROUP = "tokenleap.proposers"
PLUGINS_ENV_VAR = "TOKENLEAP_PLUGINS"

# Methods this project's repository ships, and the folder of the package that provides each: used only in the
# hint of the unknown-method error (these packages are not on PyPI; they install from a clone of the repository).
KNOWN_PACKAGES: dict[str, str] = {
    "ngram": "proposers-ngram",
    "suffix": "proposers-suffix",
    "draft_model": "proposers-draft",
    "eagle": "proposers-eagle",
    "eagle3": "proposers-eagle",
    "mlp_speculator": "proposers-eagle",
    "mlp": "proposers-eagle",
    "mtp": "proposers-eagle",
}


class UnknownMethodError(ValueError):
    """The requested speculative method is not installed, or not allowed by TOKENLEAP_PLUGINS."""


class ProposerConfigError(ValueError):
    """A method-specific key of speculative_config is unknown or has a bad value."""


@dataclass(frozen=True)
class InstalledMethod:
    method: str
    package: str  # distribution name, or "<registered>" for plugins registered in-process
    version: str
    description: str = ""  # the distribution's summary (read from its metadata: no plugin is imported)
    allowed: bool = True  # False when TOKENLEAP_PLUGINS does not list it


def _allowlist(env: Mapping[str, str]) -> set[str] | None:
    raw = env.get(PLUGINS_ENV_VAR)
    if raw is None:
        return None
    return {name.strip() for name in raw.split(",") if name.strip()}


class ProposerManager:
    """Finds and loads proposer plugins. One per engine; no global state."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self._env = os.environ if env is None else env
        self._pm = pluggy.PluginManager(PROJECT_NAME)
        self._pm.add_hookspecs(ProposerHookSpec)
        self._loaded_entry_points: set[str] = set()

    # -- registration ---------------------------------------------------------------------------
    def register(self, plugin: object, name: str | None = None) -> None:
        """Register a plugin module or object in-process (tests, embedding applications)."""
        self._pm.register(plugin, name=name)
        self._pm.check_pending()  # a misspelled hook name fails here, not silently

    def unregister(self, plugin: object) -> None:
        self._pm.unregister(plugin)

    # -- discovery ------------------------------------------------------------------------------
    def _entry_points(self) -> list[metadata.EntryPoint]:
        return list(metadata.entry_points(group=ENTRY_POINT_GROUP))

    def _registered_specs(self) -> dict[str, ProposerSpec]:
        specs: dict[str, ProposerSpec] = {}
        for result in self._pm.hook.tokenleap_register_proposers():
            for spec in result or []:
                if not isinstance(spec, ProposerSpec):
                    raise TypeError(
                        f"tokenleap_register_proposers must return ProposerSpec objects, got {type(spec)!r}"
                    )
                specs.setdefault(spec.method, spec)
        return specs

    def installed_methods(self) -> list[InstalledMethod]:
        """Every method that could be loaded, without importing any plugin module."""
        found: dict[str, InstalledMethod] = {}
        allowed = _allowlist(self._env)
        for ep in self._entry_points():
            dist = getattr(ep, "dist", None)
            package = dist.metadata["Name"] if dist is not None else "?"
            version = dist.version if dist is not None else "?"
            summary = (dist.metadata["Summary"] or "") if dist is not None else ""
            ok = allowed is None or ep.name in allowed
            found.setdefault(ep.name, InstalledMethod(ep.name, package, version, summary, ok))
        for method, spec in self._registered_specs().items():
            found.setdefault(method, InstalledMethod(method, "<registered>", "-", spec.description))
        return sorted(found.values(), key=lambda m: m.method)

    def load(self, method: str) -> ProposerSpec:
        """Return the spec of ``method``, importing only the entry point of that name."""
        specs = self._registered_specs()
        if method in specs:
            return specs[method]
        allowed = _allowlist(self._env)
        candidates = [ep for ep in self._entry_points() if ep.name == method]
        if candidates and allowed is not None and method not in allowed:
            raise UnknownMethodError(
                f"speculative_config.method={method!r} is installed but not allowed: "
                f"{PLUGINS_ENV_VAR}={self._env.get(PLUGINS_ENV_VAR)!r} lists {sorted(allowed)}; "
                f"add {method!r} to it or unset it"
            )
        if not candidates:
            raise UnknownMethodError(self._unknown_message(method))
        ep = candidates[0]
        if ep.name not in self._loaded_entry_points:
            try:
                plugin = ep.load()
            except Exception as exc:
                raise UnknownMethodError(
                    f"speculative_config.method={method!r}: importing its entry point {ep.value!r} failed: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            if not self._pm.is_registered(plugin):  # one module may provide several methods
                self._pm.register(plugin, name=f"{ENTRY_POINT_GROUP}:{ep.name}")
                self._pm.check_pending()
            self._loaded_entry_points.add(ep.name)
        specs = self._registered_specs()
        if method not in specs:
            raise UnknownMethodError(
                f"the entry point {ep.name!r} ({ep.value}) in group {ENTRY_POINT_GROUP!r} registers no "
                f"ProposerSpec with method={method!r} (it registers {sorted(specs)})"
            )
        return specs[method]

    def _unknown_message(self, method: str) -> str:
        installed = [m.method for m in self.installed_methods()]
        msg = (
            f"speculative_config.method={method!r} is not an installed speculative method; "
            f"installed: {installed or 'none'}"
        )
        if method in KNOWN_PACKAGES:
            folder = KNOWN_PACKAGES[method]
            msg += (f". It is provided by the folder {folder}/ of the tokenleap repository: from a clone, "
                    f"pip install ./{folder}")
        else:
            msg += f". Methods of the tokenleap repository: {sorted(KNOWN_PACKAGES)}"
        return msg


def validate_method_config(spec: ProposerSpec, keys: Mapping[str, Any], common_keys: set[str]) -> Any:
    """Validate the method-specific keys of a speculative_config with the method's own model.

    ``keys`` holds only the keys the engine did not recognise as common. Unknown keys fail with their
    names and the keys that are allowed.
    """
    model = spec.config_model
    if model is None:
        if keys:
            raise ProposerConfigError(
                f"speculative_config: unknown key(s) {sorted(keys)} for method {spec.method!r}; "
                f"allowed keys: {sorted(common_keys)}"
            )
        return None
    own = set(getattr(model, "model_fields", {}))
    unknown = sorted(set(keys) - own)
    if unknown:
        raise ProposerConfigError(
            f"speculative_config: unknown key(s) {unknown} for method {spec.method!r}; "
            f"allowed keys: {sorted(common_keys | own)}"
        )
    try:
        return model.model_validate(dict(keys))
    except pydantic.ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "<root>"
            problems.append(f"speculative_config.{field}={err.get('input')!r}: {err['msg']}")
        raise ProposerConfigError("; ".join(problems)) from None
