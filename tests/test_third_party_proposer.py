"""A third-party proposer, packaged on its own (tests/fixtures/proposer_pkg: dist "tokenleap-lastseen",
entry point ``lastseen`` in group ``tokenleap.proposers``), is pip-installed into a temporary folder and
found by its method string with no change to core: greedy output equals the non-speculative one, it passes
the conformance kit, and the ``TOKENLEAP_PLUGINS`` allowlist blocks it with a clear message.
(tokenleap-ngram's conformance is tested in test_ngram.py, tokenleap-suffix's in test_suffix.py.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tokenleap_plugins import ProposerConfigError, ProposerManager, UnknownMethodError
from tokenleap_plugins.testing import run_conformance

PKG = Path(__file__).parent / "fixtures" / "proposer_pkg"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """``pip install --target`` of the package (from a copy, so that no build files land in the repo)."""
    tmp = tmp_path_factory.mktemp("third_party")
    src, target = tmp / "src", tmp / "site"
    shutil.copytree(PKG, src)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(src),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert list(target.glob("tokenleap_lastseen-0.0.1.dist-info/entry_points.txt"))
    return target


@pytest.fixture
def on_path(site, monkeypatch):
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("TOKENLEAP_PLUGINS", raising=False)
    yield site
    sys.modules.pop("tokenleap_lastseen", None)


SCRIPT = textwrap.dedent("""
    import json, sys
    from tokenleap import LLM, SamplingParams
    from tokenleap_plugins import ProposerManager

    model = sys.argv[1]
    installed = {m.method: m.package for m in ProposerManager().installed_methods()}
    tok_prompts = [
        "the cat sat on the mat; the dog sat on the log. the cat sat on the",
        "def add(a, b):\\n    return a + b\\n\\ndef add(a, b):\\n",
        "Hello world! How are you today? Hello world! How",
        "Paged attention stores keys and values in fixed-size blocks. Paged",
    ]
    common = dict(max_model_len=256, kv_cache_memory_bytes=8 << 20, disable_log_stats=True)
    params = SamplingParams(temperature=0, max_tokens=48)
    spec = LLM(model, speculative_config={"method": "lastseen", "num_speculative_tokens": 3,
                                          "lastseen_window": 64}, **common)
    plain = LLM(model, **common)
    a = spec.generate(tok_prompts, params, use_tqdm=False)
    b = plain.generate(tok_prompts, params, use_tqdm=False)
    metrics = {m.name: m.value for m in spec.get_metrics() if hasattr(m, "value")}
    print(json.dumps({
        "installed": installed,
        "proposer": type(spec.engine.driver.proposer).__module__,
        "spec": [o.outputs[0].token_ids for o in a],
        "plain": [o.outputs[0].token_ids for o in b],
        "accepted": metrics["tokenleap:spec_decode_num_accepted_tokens"],
        "drafted": metrics["tokenleap:spec_decode_num_draft_tokens"],
    }))
""")


def test_installed_package_is_used_by_method_string(site, tiny_checkpoint, tmp_path):
    """A fresh interpreter that sees the package only through PYTHONPATH (its dist-info entry point)."""
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("TOKENLEAP_PLUGINS", None)
    proc = subprocess.run(
        [sys.executable, str(script), str(tiny_checkpoint("llama"))],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["installed"]["lastseen"] == "tokenleap-lastseen"
    assert result["proposer"] == "tokenleap_lastseen"
    assert result["spec"] == result["plain"]
    assert 0 < result["accepted"] <= result["drafted"]


def test_not_visible_without_the_install():
    assert "lastseen" not in [m.method for m in ProposerManager(env={}).installed_methods()]


def test_passes_the_conformance_kit(on_path):
    spec = ProposerManager(env={}).load("lastseen")
    assert spec.method == "lastseen" and spec.build.__module__ == "tokenleap_lastseen"
    run_conformance(spec, {"lastseen_window": 32}, num_memory_requests=2000)


def test_its_own_config_keys_are_checked(on_path, tiny_checkpoint, monkeypatch):
    from tokenleap import LLM

    with pytest.raises(
        ProposerConfigError,
        match=r"unknown key\(s\) \['lastseen_windw'\] for method 'lastseen'; "
        r"allowed keys: \[.*'lastseen_window'.*\]",
    ):
        LLM(str(tiny_checkpoint("llama")), speculative_config={"method": "lastseen", "lastseen_windw": 3})
    with pytest.raises(
        ProposerConfigError, match=r"speculative_config\.lastseen_window=0: Input should be greater"
    ):
        LLM(str(tiny_checkpoint("llama")), speculative_config={"method": "lastseen", "lastseen_window": 0})


def test_allowlist_blocks_it(on_path, tiny_checkpoint, monkeypatch):
    from tokenleap import LLM

    sys.modules.pop("tokenleap_lastseen", None)
    monkeypatch.setenv("TOKENLEAP_PLUGINS", "ngram,suffix")
    with pytest.raises(UnknownMethodError) as info:
        LLM(
            str(tiny_checkpoint("llama")),
            speculative_config={"method": "lastseen", "num_speculative_tokens": 3},
        )
    assert str(info.value) == (
        "speculative_config.method='lastseen' is installed but not allowed: "
        "TOKENLEAP_PLUGINS='ngram,suffix' lists ['ngram', 'suffix']; add 'lastseen' to it or "
        "unset it"
    )
    assert "tokenleap_lastseen" not in sys.modules  # blocked before its module was imported
    monkeypatch.setenv("TOKENLEAP_PLUGINS", "ngram, lastseen")
    assert ProposerManager().load("lastseen").method == "lastseen"
