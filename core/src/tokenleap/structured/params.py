"""StructuredOutputsParams: vLLM's shape of a structured-output request (exactly one constraint)."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any

_KINDS = ("json", "regex", "choice", "grammar", "json_object")


@dataclass(frozen=True)
class StructuredOutputsParams:
    """Exactly one of: ``json`` (a JSON schema, as a dict or its text), ``regex``, ``choice`` (the output is one
    of these strings), ``grammar`` (EBNF as xgrammar reads it, GBNF-like), ``json_object=True`` (any JSON
    object). Build one from a dict with ``StructuredOutputsParams.from_dict(d)`` (or ``**d``); SamplingParams
also takes the dict itself."""

    json: dict[str, Any] | str | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StructuredOutputsParams:
        if not isinstance(data, dict):
            raise ValueError(f"structured_outputs={data!r} must be a dict such as {{'json': {{...}}}}")
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"structured_outputs has unknown key(s) {unknown}; allowed: {list(_KINDS)}")
        return cls(**data)

    def __post_init__(self) -> None:
        given = [k for k in _KINDS if getattr(self, k) not in (None, False)]
        if len(given) != 1:
            raise ValueError(
                f"structured_outputs needs exactly one of {list(_KINDS)}; got {given or 'none'}"
            )
        if self.choice is not None:
            if not self.choice or not all(isinstance(c, str) and c for c in self.choice):
                raise ValueError(
                    f"structured_outputs.choice={self.choice!r} must be a non-empty list of non-empty strings"
                )
        if self.json is not None and not isinstance(self.json, (str, dict)):
            raise ValueError(f"structured_outputs.json must be a JSON schema (dict or its text), got {self.json!r}")
        if isinstance(self.json, str):
            try:
                parsed = json.loads(self.json)
            except json.JSONDecodeError as exc:
                raise ValueError(f"structured_outputs.json is not valid JSON text: {exc}") from None
            if not isinstance(parsed, dict):
                raise ValueError(f"structured_outputs.json must be a JSON schema object, got {self.json!r}")
        for field in ("regex", "grammar"):
            if getattr(self, field) == "":
                raise ValueError(f"structured_outputs.{field} is empty")

    @property
    def kind(self) -> str:
        return next(k for k in _KINDS if getattr(self, k) not in (None, False))

    @property
    def key(self) -> tuple[str, str]:
        """(kind, canonical text): what a compiled grammar is cached by."""
        kind = self.kind
        if kind == "json":
            text = self.json if isinstance(self.json, str) else json.dumps(self.json)  # key order is the output's
            return kind, text
        if kind == "choice":
            return kind, json.dumps(self.choice)
        if kind == "json_object":
            return kind, ""
        return kind, getattr(self, kind)
