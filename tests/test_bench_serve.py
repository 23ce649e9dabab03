"""``tokenleap bench serve`` and ``tokenleap serve``: the benchmark client against an in-process server, and the
CLI starting real ``tokenleap serve`` subprocesses (with and without speculation) and stopping them."""

from __future__ import annotations

import asyncio
import json
import math
import os

import pytest
from tokenleap import LLM, AsyncLLM
from tokenleap.bench.serve import compare, run_level
from tokenleap.cli import main
from tokenleap.server.launch import start_in_thread

NGRAM = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3, "prompt_lookup_min": 1}


def _check_run(run: dict, num: int, output_len: int) -> None:
    assert run["num_requests"] == num and run["num_failed"] == 0, run["errors"]
    assert run["total_output_tokens"] == num * output_len  # ignore_eos: exactly output_len each
    assert run["output_tokens_per_s"] > 0
    # every token came in a chunk of its own or shared one: at least one chunk a request, at most one a token
    assert num <= run["total_text_chunks"] <= run["total_output_tokens"]
    for key in ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms"):
        p = run[key]
        assert all(math.isfinite(p[q]) for q in ("p50", "p90", "p99")), (key, p)
        assert 0 < p["p50"] <= p["p90"] <= p["p99"], (key, p)


@pytest.mark.parametrize("spec", [None, NGRAM], ids=["plain", "ngram"])
def test_run_level_against_a_server(tiny_checkpoint, torch_one_thread, spec):
    llm = LLM(model=str(tiny_checkpoint("llama")), disable_log_stats=True, kv_cache_memory_bytes=8 << 20,
              speculative_config=spec)
    aio = AsyncLLM.from_llm(llm)
    server = start_in_thread(aio, ["tiny"])
    try:
        prompts = ["The quick brown fox", [5, 6, 7, 8, 9], "the cat sat on the mat", "def add(a, b):"] * 2
        for concurrency, rate in ((1, float("inf")), (4, float("inf")), (8, 50.0)):
            res = asyncio.run(run_level(server.base_url, "tiny", prompts, concurrency=concurrency,
                                        request_rate=rate, output_len=12, label="t"))
            d = res.to_dict()
            _check_run(d, len(prompts), 12)
            assert d["request_rate"] == (None if rate == float("inf") else rate)
            if spec is None:
                assert d["acceptance"] is None
            else:  # summed from each request's own figures
                assert d["acceptance"]["num_draft_tokens"] > 0
    finally:
        server.stop()
        aio.shutdown()


def test_cli_bench_serve_starts_a_server(tiny_checkpoint, tmp_path, capsys):
    """One `tokenleap serve` subprocess (--no-plain: only the speculative run), started, measured, stopped."""
    out = tmp_path / "serve.json"
    rc = main(["bench", "serve", "--model", str(tiny_checkpoint("llama")), "--kv-cache-memory-bytes", str(8 << 20),
               "--speculative-config", json.dumps(NGRAM), "--no-plain", "--num-prompts", "4", "--input-len", "8",
               "--output-len", "6", "--concurrency", "1", "4", "--output-json", str(out)])
    assert rc == 0, capsys.readouterr().err[-3000:]
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "serve" and list(doc["runs"]) == ["speculative"]
    assert doc["servers"]["speculative"]["speculative_config"] == NGRAM
    runs = doc["runs"]["speculative"]
    assert [r["concurrency"] for r in runs] == [1, 4]
    for r in runs:
        _check_run(r, 4, 6)
        assert r["acceptance"]["num_draft_tokens"] > 0
    assert "speculative_vs_plain" not in doc


def test_compare_pairs_runs_by_level():
    def run(c, rate, tps, itl):
        return {"concurrency": c, "request_rate": rate, "output_tokens_per_s": tps, "itl_ms": {"p50": itl},
                "tpot_ms": {"p50": itl / 2}}

    plain = [run(1, None, 100.0, 10.0), run(64, None, 1000.0, 20.0)]
    spec = [run(1, None, 250.0, 25.0), run(64, None, 900.0, 18.0), run(8, 2.0, 5.0, 1.0)]
    assert compare(plain, spec) == [
        {"concurrency": 1, "request_rate": None, "output_tokens_per_s_ratio": 2.5, "itl_p50_ratio": 2.5,
         "tpot_p50_ratio": 2.5},
        {"concurrency": 64, "request_rate": None, "output_tokens_per_s_ratio": 0.9, "itl_p50_ratio": 0.9,
         "tpot_p50_ratio": 0.9},
    ]


@pytest.mark.parametrize("argv,flag,message", [
    (["bench", "serve", "--no-plain"], "--no-plain", "needs --speculative-config"),
    (["bench", "serve", "--endpoint", "chat"], "--endpoint", "chat needs a text data set"),
    (["bench", "serve", "--request-rate", "0"], "--request-rate", "expected a number in (0.0, inf)"),
    (["bench", "serve", "--concurrency", "0"], "--concurrency", "expected a positive integer"),
    (["serve", "--port", "70000"], "--port", "expected a port in [0, 65535]"),
    (["serve", "m1", "--model", "m2"], "--model", "differ; give one"),
    (["serve", "--speculative-config", '{"method": "nope"}'], "--speculative-config", "nope"),
])
def test_cli_serve_bad_arguments(argv, flag, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and message in err, err


def test_process_cpu_seconds_counts_a_child_busy_loop():
    import subprocess
    import sys
    import time

    from tokenleap.bench.server_process import child_pids, process_cpu_seconds

    child = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 3: pass"])
    try:
        time.sleep(0.3)
        assert child.pid in child_pids(os.getpid())
        first = process_cpu_seconds(child.pid)
        time.sleep(1.0)
        assert process_cpu_seconds(child.pid) - first > 0.3  # it spins: CPU time grows with wall time
    finally:
        child.kill()
        child.wait()
    assert math.isnan(process_cpu_seconds(child.pid))  # gone
