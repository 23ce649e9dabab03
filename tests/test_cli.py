"""`tokenleap` CLI run in-process (main([...])) on a tiny random checkpoint."""

from __future__ import annotations

import json
import math

import pytest
from tokenleap.cli import DEFAULT_PROMPT, main

from tests.helpers.tiny_models import make_tiny_checkpoint

NGRAM = '{"method": "ngram", "num_speculative_tokens": 3}'
SMALL_KV = ["--device", "cpu", "--kv-cache-memory-bytes", str(8 << 20)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return str(make_tiny_checkpoint(tmp_path_factory.mktemp("cli"), "llama"))


def _run(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_text(tiny, capsys):
    code, out, _ = _run(
        capsys,
        [
            "generate",
            "--model",
            tiny,
            *SMALL_KV,
            "--prompt",
            "the cat sat on the mat",
            "--prompt",
            "def add(a, b):",
            "--max-tokens",
            "6",
            "--no-chat",
        ],
    )
    assert code == 0
    assert out.count("=== prompt") == 2 and "the cat sat on the mat" in out
    assert "tokens generated: 12" in out and "tokens/s:" in out and "wall time:" in out
    assert "acceptance" not in out  # speculation off


def test_generate_speculative_json(tiny, capsys):
    code, out, _ = _run(
        capsys,
        [
            "generate",
            "--model",
            tiny,
            *SMALL_KV,
            "--max-tokens",
            "8",
            "--speculative-config",
            NGRAM,
            "--json",
        ],
    )
    assert code == 0
    doc = json.loads(out)
    assert doc["num_prompts"] == 1 and doc["outputs"][0]["prompt"] == DEFAULT_PROMPT
    assert doc["chat"] is True  # the tiny tokenizer has a chat template
    comp = doc["outputs"][0]["completions"][0]
    assert comp["num_tokens"] == doc["num_generated_tokens"] <= 8
    assert doc["tokens_per_s"] > 0 and doc["wall_time_s"] > 0
    acc = doc["acceptance"]
    assert set(acc) >= {
        "mean_acceptance_length",
        "draft_acceptance_rate",
        "per_position_acceptance_rate",
        "num_drafts",
        "num_draft_tokens",
        "num_accepted_tokens",
    }
    assert acc["mean_acceptance_length"] >= 1.0 and 0.0 <= acc["draft_acceptance_rate"] <= 1.0
    assert acc["num_accepted_tokens"] <= acc["num_draft_tokens"]


def test_generate_prompts_file_and_n(tiny, capsys, tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "hello world"}\n\n{"text": "the dog sat"}\n')
    code, out, _ = _run(
        capsys,
        [
            "generate",
            "--model",
            tiny,
            *SMALL_KV,
            "--prompts-file",
            str(f),
            "--n",
            "2",
            "--temperature",
            "0.8",
            "--max-tokens",
            "3",
            "--json",
            "--no-chat",
        ],
    )
    assert code == 0
    doc = json.loads(out)
    assert [o["prompt"] for o in doc["outputs"]] == ["hello world", "the dog sat"]
    assert all(len(o["completions"]) == 2 for o in doc["outputs"]) and doc["num_generated_tokens"] == 12


def test_proposers_lists_installed_with_versions(capsys):
    code, out, _ = _run(capsys, ["proposers"])
    assert code == 0
    rows = {
        line.split()[0]: line.split() for line in out.splitlines() if line.startswith(("ngram", "suffix"))
    }
    assert rows["ngram"][1] == "tokenleap-ngram" and rows["suffix"][1] == "tokenleap-suffix"
    assert rows["ngram"][2][0].isdigit()
    assert " ".join(rows["ngram"][3:]).startswith("N-gram (prompt lookup) speculative-decoding proposer")
    code, out, _ = _run(capsys, ["proposers", "--json"])
    doc = json.loads(out)
    by_method = {m["method"]: m for m in doc["installed"]}
    assert by_method["ngram"]["package"] == "tokenleap-ngram" and by_method["suffix"]["version"]
    assert by_method["ngram"]["allowed"] is True
    for m in doc["not_installed"]:
        assert m["install"] == f"pip install ./{m['folder']}"


def test_proposers_marks_what_the_allowlist_blocks(capsys, monkeypatch):
    monkeypatch.setenv("TOKENLEAP_PLUGINS", "suffix")
    code, out, _ = _run(capsys, ["proposers"])
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith(("ngram", "suffix"))}
    assert lines["ngram"].endswith("[not allowed by TOKENLEAP_PLUGINS]")
    assert not lines["suffix"].endswith("]")


@pytest.mark.parametrize(
    ("argv", "flag", "fragment"),
    [
        (["generate", "--speculative-config", "{method: ngram}"], "--speculative-config", "not valid JSON"),
        (["generate", "--speculative-config", "[1, 2]"], "--speculative-config", "JSON object"),
        (["generate", "--speculative-config", '{"method": "nope"}'], "--speculative-config", "'nope'"),
        (
            ["generate", "--speculative-config", '{"method": "ngram", "bogus": 1}'],
            "--speculative-config",
            "bogus",
        ),
        (["generate", "--max-tokens", "-3"], "--max-tokens", "-3"),
        (["generate", "--temperature", "-1"], "--temperature", "-1"),
        (["generate", "--top-p", "1.5"], "--top-p", "1.5"),
        (["generate", "--dtype", "int4"], "--dtype", "int4"),
        (["generate", "--tensor-parallel-size", "0"], "--tensor-parallel-size", "0"),
        (["generate", "--model", "/no/such/model"], "--model", "/no/such/model"),
        (["generate", "--prompts-file", "/no/such.jsonl"], "--prompts-file", "/no/such.jsonl"),
        (["bench", "latency", "--batch-size", "0"], "--batch-size", "0"),
        (["bench", "latency", "--dataset", "imagenet"], "--dataset", "imagenet"),
        (["bench", "throughput", "--dataset", "jsonl:/no/such.jsonl"], "--dataset", "/no/such.jsonl"),
        (["bench", "throughput", "--num-prompts", "x"], "--num-prompts", "'x'"),
        (["pull", "no-such-alias"], "ALIAS", "smollm2-135m-instruct"),
    ],
)
def test_bad_arguments_exit_2_naming_the_flag(capsys, argv, flag, fragment):
    code, out, err = _run(capsys, argv)
    assert code == 2, err
    assert f"argument {flag}" in err and fragment in err, err
    assert out == ""


def test_unknown_method_names_installed_ones(capsys):
    _, _, err = _run(capsys, ["generate", "--speculative-config", '{"method": "eagle9"}'])
    assert "ngram" in err and "suffix" in err


def _check_acceptance(acc):
    assert acc is not None
    assert acc["mean_acceptance_length"] >= 1.0
    assert 0.0 <= acc["draft_acceptance_rate"] <= 1.0
    assert len(acc["per_position_acceptance_rate"]) <= 3
    assert all(0.0 <= r <= 1.0 for r in acc["per_position_acceptance_rate"])


def test_bench_latency_json(tiny, capsys, tmp_path):
    path = tmp_path / "out" / "latency.json"
    code, out, _ = _run(
        capsys,
        [
            "bench",
            "latency",
            "--model",
            tiny,
            *SMALL_KV,
            "--batch-size",
            "2",
            "--input-len",
            "8",
            "--output-len",
            "6",
            "--num-iters",
            "3",
            "--num-iters-warmup",
            "1",
            "--speculative-config",
            NGRAM,
            "--output-json",
            str(path),
        ],
    )
    assert code == 0
    doc = json.loads(path.read_text())
    assert json.loads(out) == doc
    assert doc["benchmark"] == "latency" and doc["config"]["dataset"] == "random"
    assert doc["batch_size"] == 2 and doc["output_len"] == 6 and doc["num_iters"] == 3
    assert doc["mean_input_len"] == 8
    assert len(doc["latencies_s"]) == 3 and all(x > 0 for x in doc["latencies_s"])
    assert doc["median_latency_s"] <= doc["p90_latency_s"] <= max(doc["latencies_s"])
    assert math.isclose(doc["median_ms_per_output_token"], doc["median_latency_s"] * 1e3 / 6, rel_tol=1e-9)
    assert doc["p90_ms_per_output_token"] >= doc["median_ms_per_output_token"] > 0
    assert doc["median_tpot_ms"] > 0 and doc["p90_tpot_ms"] >= doc["median_tpot_ms"]
    assert doc["total_output_tokens"] == 3 * 2 * 6  # ignore_eos: exact lengths
    assert doc["output_tokens_per_s"] > 0
    _check_acceptance(doc["acceptance"])


def test_bench_throughput_json(tiny, capsys, tmp_path):
    f = tmp_path / "prompts.jsonl"
    f.write_text("\n".join(json.dumps({"prompt": f"the cat sat on the mat {i}"}) for i in range(3)) + "\n")
    path = tmp_path / "throughput.json"
    code, out, _ = _run(
        capsys,
        [
            "bench",
            "throughput",
            "--model",
            tiny,
            *SMALL_KV,
            "--num-prompts",
            "5",
            "--dataset",
            f"jsonl:{f}",
            "--output-len",
            "5",
            "--speculative-config",
            '{"method": "suffix", "num_speculative_tokens": 3}',
            "--output-json",
            str(path),
        ],
    )
    assert code == 0
    doc = json.loads(path.read_text())
    assert doc["benchmark"] == "throughput" and doc["num_prompts"] == 5
    assert doc["total_output_tokens"] == 25 and doc["mean_output_len"] == 5
    assert doc["total_input_tokens"] > 0
    assert doc["requests_per_s"] > 0 and doc["output_tokens_per_s"] > 0
    assert math.isclose(doc["output_tokens_per_s"], 25 / doc["elapsed_s"], rel_tol=1e-9)
    assert doc["total_tokens_per_s"] > doc["output_tokens_per_s"]
    _check_acceptance(doc["acceptance"])


def test_bench_throughput_no_speculation_random(tiny, capsys):
    code, out, _ = _run(
        capsys,
        [
            "bench",
            "throughput",
            "--model",
            tiny,
            *SMALL_KV,
            "--num-prompts",
            "4",
            "--input-len",
            "5",
            "--output-len",
            "4",
            "--no-warmup",
        ],
    )
    assert code == 0
    doc = json.loads(out)
    assert doc["acceptance"] is None and doc["total_input_tokens"] == 20 and doc["total_output_tokens"] == 16


@pytest.mark.parametrize("raw", ["0", "-1", "fast"])
def test_serve_bad_switch_interval_fails_before_loading(capsys, monkeypatch, raw):
    monkeypatch.setenv("TOKENLEAP_SWITCH_INTERVAL_S", raw)
    code, _, err = _run(capsys, ["serve", "--model", "/nonexistent/model"])  # the model would fail to load
    assert code == 2
    assert f"TOKENLEAP_SWITCH_INTERVAL_S={raw!r}: a number of seconds > 0 is needed" in err


def test_server_switch_interval_default_and_override(monkeypatch):
    from tokenleap.server.launch import SWITCH_INTERVAL_S, switch_interval_s

    monkeypatch.delenv("TOKENLEAP_SWITCH_INTERVAL_S", raising=False)
    assert switch_interval_s() == SWITCH_INTERVAL_S
    monkeypatch.setenv("TOKENLEAP_SWITCH_INTERVAL_S", "0.001")
    assert switch_interval_s() == 0.001


def test_serve_stream_interval_must_be_positive(capsys):
    code, _, err = _run(capsys, ["serve", "--stream-interval", "0", "--model", "/nonexistent/model"])
    assert code == 2 and "argument --stream-interval: expected a positive integer (>= 1), got 0" in err
