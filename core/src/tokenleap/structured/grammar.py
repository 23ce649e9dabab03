"""Compiling structured-output constraints with xgrammar, once per (tokenizer, vocabulary, constraint).

xgrammar was chosen over llguidance by a CPU measurement on SmolLM2's tokenizer (docs/sampling.md,
tests/benchmarks/bench_grammar_engines.py): about 4x less time per token to fill the next-token bitmask and
advance the matcher (the work done at every verified position of every step), and it reads the GGUF
tokenizer's byte-level vocabulary as it is.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from typing import Any

from tokenleap.structured.params import StructuredOutputsParams

_MAX_CACHED = 256  # compiled grammars kept per compiler (least recently used dropped first)
_lock = threading.Lock()
_compilers: dict[tuple[int, int], tuple[Any, Any, OrderedDict]] = {}  # (id(tok), vocab) -> (tok, compiler, cache)


def _compiler(tokenizer: Any, vocab_size: int) -> tuple[Any, OrderedDict]:
    import xgrammar as xgr

    key = (id(tokenizer), vocab_size)
    entry = _compilers.get(key)
    if entry is None or entry[0] is not tokenizer:
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        entry = (tokenizer, xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False), OrderedDict())
        _compilers[key] = entry
    return entry[1], entry[2]


def choice_ebnf(choices: list[str]) -> str:
    """An EBNF grammar whose sentences are exactly ``choices`` (JSON string escapes are EBNF's)."""
    return "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)


def compile_constraint(so: StructuredOutputsParams, tokenizer: Any, vocab_size: int) -> Any:
    """The xgrammar CompiledGrammar of ``so`` (cached). Raises ValueError naming the field when it cannot
    be compiled."""
    if tokenizer is None:
        raise ValueError(f"structured_outputs.{so.kind} needs a tokenizer; this model was loaded without one")
    kind, text = so.key
    with _lock:
        compiler, cache = _compiler(tokenizer, vocab_size)
        if (kind, text) in cache:
            cache.move_to_end((kind, text))
            return cache[(kind, text)]
        try:
            if kind == "json":
                compiled = compiler.compile_json_schema(text, any_whitespace=False)
            elif kind == "regex":
                compiled = compiler.compile_regex(text)
            elif kind == "choice":
                compiled = compiler.compile_grammar(choice_ebnf(so.choice))
            elif kind == "grammar":
                compiled = compiler.compile_grammar(text)
            else:  # json_object
                compiled = compiler.compile_builtin_json_grammar()
        except Exception as exc:  # xgrammar raises RuntimeError / ValueError with its parser's message
            shown = text if len(text) <= 200 else text[:200] + "..."
            raise ValueError(f"structured_outputs.{kind}={shown!r} could not be compiled: {_message(exc)}") from None
        cache[(kind, text)] = compiled
        if len(cache) > _MAX_CACHED:
            cache.popitem(last=False)
        return compiled


def new_matcher(compiled: Any, stop_token_ids: list[int]) -> Any:
    import xgrammar as xgr

    return xgr.GrammarMatcher(compiled, override_stop_tokens=stop_token_ids or None)


def fill_bitmask(matcher: Any, bitmask: Any, index: int) -> None:
    """Write the matcher's allowed next tokens into row ``index`` of ``bitmask`` ([rows, words] int32, CPU)."""
    matcher.fill_next_token_bitmask(bitmask, index)


def _message(exc: Exception) -> str:
    """xgrammar's message without its '[time] file.cc:line: ' prefix."""
    return re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", str(exc).strip())
