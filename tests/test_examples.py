"""Every examples/*.py runs on the default model with a small --max-tokens, exits 0 and prints what it promises.

New examples are picked up automatically; EXPECTED lists text an example must print (examples not listed only
need to exit 0 with some output). Each runs in its own process, as a user runs it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
EXPECTED = {
    "ngram.py": ["mean acceptance length:", "drafts accepted:"],
    "suffix.py": ["round 1:", "round 2:", "mean acceptance length"],
    "tokens_prompt.py": ["prompt ids:", "output ids:", "same as the dict prompt and the text prompt: True"],
    "greedy_vs_sampling.py": ["greedy   :", "seed 7, #2:", "same seed, same texts: True"],
    "acceptance_metrics.py": ["== per request", "tokenleap:spec_decode_num_accepted_tokens_per_pos:",
                              "mean acceptance length over the run:"],
    "third_party_proposer.py": ["method 'lastseen'", "same tokens as without speculation: True"],
    "draft_model.py": ["mean acceptance length:", "drafts accepted:"],
    "openai_server.py": ["answer:", "spec_decode:", "streamed the same text: True"],
    "tensor_parallel_two_hosts.py": ["token ids:", "text:"],
    "eagle3.py": ["mean acceptance length:", "same tokens as plain decoding: True"],
    "mlp_speculator.py": ["mean acceptance length:", "drafts accepted:"],
    "structured_outputs.py": ["stopped by max_tokens after 6 tokens", "mean acceptance length:"],
    "cpu_quantized.py": ["quantization=int4:", "tokens/s"],
    "train_eagle_head.py": ["head files: ['config.json', 'model.safetensors']",
                            "mean acceptance length with the toy head:"],
}


def test_every_example_is_covered():
    assert EXAMPLES, "no examples found"
    assert set(EXPECTED) <= {p.name for p in EXAMPLES}, "EXPECTED names an example that does not exist"


@pytest.mark.slow
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(path, smollm2_path):
    env = {**os.environ, "PYTHONPATH": ""}  # as a user runs it: the installed packages, not the test tree
    proc = subprocess.run([sys.executable, str(path), "--max-tokens", "6"], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, f"{path.name} failed:\n{proc.stdout}\n{proc.stderr[-3000:]}"
    assert proc.stdout.strip(), f"{path.name} printed nothing"
    for text in EXPECTED.get(path.name, []):
        assert text in proc.stdout, f"{path.name} did not print {text!r}:\n{proc.stdout}"
    assert "Traceback" not in proc.stderr and "clean_up_tokenization_spaces" not in proc.stderr
