"""Benchmarks that drive an ``LLM`` directly: ``latency.run_latency`` and ``throughput.run_throughput``
take an ``LLM`` and plain arguments and return dataclasses (``.to_dict()`` is the JSON the CLI writes).
This module holds what both share: acceptance figures read from ``LLM.get_metrics()``, percentiles,
and turning a data set name into prompts for a given engine.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from tokenleap.metrics import PREFIX
from tokenleap.outputs import SpecDecodeStats

_SPEC_COUNTERS = ("num_drafts", "num_draft_tokens", "num_accepted_tokens")


# The per-request and engine-wide acceptance figures are the same type.
AcceptanceStats = SpecDecodeStats


class BenchResult:
    """Mixin of the result dataclasses: ``to_dict()`` is the JSON document the CLI writes."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        acceptance = getattr(self, "acceptance", None)
        d["acceptance"] = acceptance.to_dict() if acceptance is not None else None
        return d


def acceptance_snapshot(metrics: list[Any]) -> AcceptanceStats:
    """The cumulative acceptance counters in an ``LLM.get_metrics()`` list."""
    by_name = {m.name: m for m in metrics}
    values = {k: int(getattr(by_name.get(PREFIX + "spec_decode_" + k), "value", 0)) for k in _SPEC_COUNTERS}
    per_pos = by_name.get(PREFIX + "spec_decode_num_accepted_tokens_per_pos")
    return AcceptanceStats(**values, num_accepted_tokens_per_pos=list(getattr(per_pos, "values", [])))


def acceptance_between(before: AcceptanceStats, after: AcceptanceStats) -> AcceptanceStats:
    """What the engine did between two snapshots (e.g. excluding warm-up iterations)."""
    pos_before = before.num_accepted_tokens_per_pos + [0] * len(after.num_accepted_tokens_per_pos)
    return AcceptanceStats(
        num_drafts=after.num_drafts - before.num_drafts,
        num_draft_tokens=after.num_draft_tokens - before.num_draft_tokens,
        num_accepted_tokens=after.num_accepted_tokens - before.num_accepted_tokens,
        num_accepted_tokens_per_pos=[
            a - b for a, b in zip(after.num_accepted_tokens_per_pos, pos_before, strict=False)
        ],
    )


def speculation_enabled(llm: Any) -> bool:
    return getattr(llm.engine, "spec_cfg", None) is not None


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]) of a non-empty list; NaN for an empty one."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def build_prompts(
    llm: Any,
    dataset: str,
    num_prompts: int,
    input_len: int | None = None,
    *,
    seed: int = 0,
    chat: bool = False,
) -> list[dict[str, Any]]:
    """``num_prompts`` prompts from a data set, ready for ``llm.generate``.

    ``random``: TokensPrompts of exactly ``input_len`` random token ids (seeded). Any other data set
    (see ``prompts.load_prompts``) gives its text prompts as they are (``input_len`` does not apply);
    ``chat=True`` wraps each in the model's chat template as one user message.
    """
    from tokenleap.bench import prompts as P

    if dataset == "random":
        if input_len is None:
            raise ValueError("dataset 'random' needs input_len")
        return P.random_token_prompts(num_prompts, input_len, llm.engine.arch.vocab_size, seed=seed)
    texts = P.load_prompts(dataset, num_prompts)
    if not chat:
        return [{"prompt": t} for t in texts]
    tok = llm.get_tokenizer()
    if tok is None:
        raise ValueError("chat=True needs a tokenizer; this model was loaded without one")
    out = []
    for t in texts:
        ids = tok.apply_chat_template(
            [{"role": "user", "content": t}], tokenize=True, add_generation_prompt=True
        )
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        out.append({"prompt_token_ids": list(ids), "prompt": t})
    return out
