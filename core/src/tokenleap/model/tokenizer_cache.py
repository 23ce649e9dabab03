"""A GGUF file's converted tokenizer, saved once and loaded from disk afterwards.

transformers converts a GGUF tokenizer by re-reading the whole file's metadata (twice) and rebuilding the BPE
vocabulary and merges in Python: ~10 s for SmolLM2 on a small CPU, at every load. The result is an ordinary
fast tokenizer, so it is saved (``save_pretrained``: tokenizer.json, its config, the chat template) under
``cache_dir()/tokenizers/<file name>-<key>/`` and later loads read that folder (~0.2 s), which gives the same
object: the same tokenizer.json, special tokens and chat template. The key covers the file (resolved path, size,
modification time) and the transformers / tokenizers versions, whose conversion may differ; a stale or broken
entry is converted again. The cache is written atomically (a temporary folder, then a rename), so two
processes loading the same model at once both end up with a whole entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

_FORMAT = 1  # bump when what is saved changes
_DONE = "tokenleap-complete"  # written last: an entry without it is incomplete


def quiet_tokenizer(tok: Any) -> Any:
    """Turn off ``clean_up_tokenization_spaces`` where transformers would skip it anyway (BPE models, unless
    forced), so that every decode does not warn about ignoring it. The text is the same."""
    backend = getattr(tok, "_tokenizer", None)
    forced = getattr(tok, "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", None)
    if (getattr(tok, "clean_up_tokenization_spaces", False) and forced is False and backend is not None
            and type(backend.model).__name__ == "BPE"):
        tok.clean_up_tokenization_spaces = False
    return tok


def cache_key(path: Path) -> str:
    import tokenizers
    import transformers

    st = path.stat()
    ident = f"{_FORMAT}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{transformers.__version__}|"
    ident += tokenizers.__version__
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def cache_folder(path: Path) -> Path:
    from tokenleap.model.hub import cache_dir

    return cache_dir() / "tokenizers" / f"{path.name}-{cache_key(path)}"


def cached_tokenizer(path: Path, convert: Callable[[], Any]) -> Any:
    """The tokenizer of the model file ``path``: from the cache when present, else ``convert()`` and saved."""
    folder = cache_folder(path)
    if (folder / _DONE).is_file():
        try:
            return quiet_tokenizer(_tokenizer_class(folder).from_pretrained(str(folder)))
        except (OSError, ValueError) as err:  # a damaged entry: convert again
            print(f"[tokenleap] ignoring the cached tokenizer in {folder} ({err}); converting again")
    tok = quiet_tokenizer(convert())
    _save(tok, folder)
    return tok


def _tokenizer_class(folder: Path) -> Any:
    """The saved tokenizer's own class (``TokenizersBackend``): importing it alone takes half the time of
    ``AutoTokenizer``, which pulls in transformers' model registry."""
    import transformers

    name = json.loads((folder / "tokenizer_config.json").read_text()).get("tokenizer_class")
    cls = getattr(transformers, name, None) if isinstance(name, str) and name.isidentifier() else None
    return cls if cls is not None else transformers.AutoTokenizer


def _save(tok: Any, folder: Path) -> None:
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    except OSError:
        return  # a read-only cache: load without it
    try:
        tok.save_pretrained(str(tmp))
        (tmp / _DONE).write_text("")
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    except OSError:
        pass  # another process renamed its entry first, or the disk is full: the next load converts again
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
