"""Load a Llama-family checkpoint (Hugging Face safetensors folder or GGUF file) into HF-named tensors.

`load_checkpoint(path)` returns the architecture, the weights under the exact parameter names of
transformers' LlamaForCausalLM / MistralForCausalLM / Qwen2ForCausalLM, the tokenizer, and the dtype.
Pickled PyTorch checkpoints (``pytorch_model.bin``, sharded or not) are read only through torch's restricted
unpickler (``torch.load(weights_only=True)``: tensors and plain containers, no code); a pickle that needs more
is refused with the reason, never executed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tokenleap.model.arch import ModelArchConfig
from tokenleap.model.gguf_loader import load_gguf

DTYPES = {
    "float32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "half": torch.float16,
}
# (HF-named tensors or lazy slices, architecture) -> the tensors to keep
Select = Callable[[dict[str, Any], ModelArchConfig], dict[str, torch.Tensor]]
PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# Tensors some checkpoints carry that are buffers, not parameters: dropped silently.
_IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


@dataclass
class LoadedCheckpoint:
    arch: ModelArchConfig
    weights: dict[str, torch.Tensor]  # HF names -> CPU tensors in torch_dtype; [out, in] for linears
    tokenizer: Any  # transformers PreTrainedTokenizerBase
    torch_dtype: torch.dtype
    source: str  # the resolved file or folder read
    hf_config: dict[str, Any] = field(default_factory=dict)  # config.json (or its GGUF equivalent)


def resolve_dtype(dtype: str | torch.dtype, checkpoint_dtype: torch.dtype | None, device: str) -> torch.dtype:
    """ "auto" -> float32 on CPU, else the checkpoint's dtype (bfloat16 when unknown or quantized)."""
    if isinstance(dtype, torch.dtype):
        if dtype in DTYPES.values():
            return dtype
        dtype = str(dtype).removeprefix("torch.")
    name = str(dtype).removeprefix("torch.")
    if name == "auto":
        if torch.device(device).type == "cpu":
            return torch.float32
        return checkpoint_dtype if checkpoint_dtype in DTYPES.values() else torch.bfloat16
    if name not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; allowed values: {['auto', *DTYPES]}")
    return DTYPES[name]


def expected_weight_names(arch: ModelArchConfig) -> list[str]:
    """Every parameter name the model class needs, in state-dict order."""
    names = ["model.embed_tokens.weight"]
    for i in range(arch.num_hidden_layers):
        p = f"model.layers.{i}."
        for proj in ("q", "k", "v", "o"):
            names.append(f"{p}self_attn.{proj}_proj.weight")
            if arch.attention_bias and proj != "o":
                names.append(f"{p}self_attn.{proj}_proj.bias")
        names += [f"{p}mlp.{m}_proj.weight" for m in ("gate", "up", "down")]
        names += [f"{p}input_layernorm.weight", f"{p}post_attention_layernorm.weight"]
    names.append("model.norm.weight")
    if not arch.tie_word_embeddings:
        names.append("lm_head.weight")
    return names


def check_weights(
    weights: dict[str, torch.Tensor], arch: ModelArchConfig, source: str
) -> dict[str, torch.Tensor]:
    """Drop known buffers and a tied lm_head; raise on missing or unexpected tensors."""
    expected = expected_weight_names(arch)
    present = {k: v for k, v in weights.items() if not k.endswith(_IGNORED_SUFFIXES)}
    if arch.tie_word_embeddings:
        present.pop("lm_head.weight", None)
    missing = [n for n in expected if n not in present]
    unexpected = sorted(set(present) - set(expected))
    if missing:
        raise ValueError(
            f"checkpoint {source} lacks {len(missing)} tensor(s) the "
            f"{arch.model_type} model needs, e.g. {missing[:5]}"
        )
    if unexpected:
        raise ValueError(
            f"checkpoint {source} has {len(unexpected)} tensor(s) a {arch.model_type} "
            f"model does not use (unsupported variant?), e.g. {unexpected[:5]}"
        )
    return {n: present[n] for n in expected}


def drop_mtp_tensors(weights: dict[str, torch.Tensor], cfg: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Leave out the multi-token-prediction layers a checkpoint may carry (config ``num_nextn_predict_layers``:
    MiMo's ``model.mtp_layers.*``, DeepSeek-V3's ``model.layers.{N..}``): no part of the target, they are
    read by speculative method 'mtp' itself."""
    extra = int(cfg.get("num_nextn_predict_layers") or 0)
    if not extra:
        return weights
    n = int(cfg["num_hidden_layers"])
    prefixes = ("model.mtp_layers.", *(f"model.layers.{i}." for i in range(n, n + extra)))
    return {k: v for k, v in weights.items() if not k.startswith(prefixes)}


def read_pickled_weights(path: Path) -> dict[str, torch.Tensor]:
    """A ``.bin`` / ``.pt`` state dict through torch's restricted unpickler (weights_only=True): a pickle that
    would import or call anything beyond tensors and plain containers is refused, not run."""
    import pickle

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=False)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, EOFError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"refusing to load {path}: it is not a plain tensor pickle (torch.load(weights_only=True) rejected it: "
            f"{first}). Loading it fully could run arbitrary code; convert it to safetensors from a trusted copy."
        ) from e
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                            for k, v in obj.items()):
        raise ValueError(f"{path} does not hold a state dict (name -> tensor); got {type(obj).__name__}")
    return obj


def pickled_weight_files(folder: Path) -> list[Path]:
    """``pytorch_model.bin`` or the shards its index lists (empty when there are none)."""
    index = folder / "pytorch_model.bin.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [folder / f for f in sorted(set(weight_map.values()))]
    return [folder / "pytorch_model.bin"] if (folder / "pytorch_model.bin").is_file() else []


def _read_pickled(files: list[Path], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    weights: dict[str, torch.Tensor] = {}
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"weight shard {f} (listed in the index) does not exist")
        weights.update({k: v.to(dtype) if v.is_floating_point() else v for k, v in read_pickled_weights(f).items()})
    return weights


def _refuse_pickled(source: Path, files: list[Path]) -> ValueError:
    names = ", ".join(f.name for f in files[:5])
    return ValueError(
        f"{source} holds only pickled PyTorch weights ({names}). Loading a pickle can run arbitrary "
        "code, so tokenleap reads only a folder's pytorch_model.bin (through torch's restricted "
        "unpickler) and refuses other pickles. Convert the checkpoint to safetensors first, e.g. with "
        "transformers: AutoModelForCausalLM.from_pretrained(folder).save_pretrained(new_folder, "
        "safe_serialization=True) (transformers >= 5 always writes safetensors), and load new_folder."
    )


def _safetensors_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [folder / f for f in sorted(set(weight_map.values()))]
    return sorted(folder.glob("*.safetensors"))


def _read_safetensors(files: list[Path], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    weights: dict[str, torch.Tensor] = {}
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"safetensors shard {f} (listed in the index) does not exist")
        with safe_open(str(f), framework="pt", device="cpu") as st:
            for name in st.keys():
                weights[name] = st.get_tensor(name).to(dtype)
    return weights


def _safetensors_slices(files: list[Path]) -> tuple[list[Any], dict[str, Any]]:
    """(open file handles, name -> lazy slice): a slice reads only the rows / columns it is indexed with."""
    from safetensors import safe_open

    handles, slices = [], {}
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"safetensors shard {f} (listed in the index) does not exist")
        handles.append(safe_open(str(f), framework="pt", device="cpu"))
        slices.update((name, handles[-1].get_slice(name)) for name in handles[-1].keys())
    return handles, slices


def _stored_dtype(files: list[Path]) -> torch.dtype | None:
    """The dtype of the first floating tensor of the first shard (read from the header only)."""
    from safetensors import safe_open

    with safe_open(str(files[0]), framework="pt", device="cpu") as st:
        for name in st.keys():
            t = st.get_slice(name).get_dtype()
            if t in ("F32", "BF16", "F16"):
                return {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}[t]
    return None


def _load_hf_folder(folder: Path, dtype: str | torch.dtype, device: str, with_tokenizer: bool = True,
                    select: Select | None = None) -> LoadedCheckpoint:
    files = _safetensors_files(folder)
    pickled_files = [] if files else pickled_weight_files(folder)
    if not files and not pickled_files:
        pickled = sorted(f for f in folder.iterdir() if f.suffix in PICKLED_SUFFIXES)
        if pickled:
            raise _refuse_pickled(folder, pickled)
        raise ValueError(f"{folder} has no *.safetensors weights, no pytorch_model.bin and no .gguf file")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} has safetensors weights but no config.json")
    cfg = json.loads(config_path.read_text())
    gen_path = folder / "generation_config.json"  # Llama 3 instruct lists its extra eos ids here
    if gen_path.is_file() and json.loads(gen_path.read_text()).get("eos_token_id") is not None:
        cfg["eos_token_id"] = json.loads(gen_path.read_text())["eos_token_id"]
    arch = ModelArchConfig.from_hf_config(cfg)
    config_dtype = DTYPES.get(str(cfg.get("torch_dtype") or cfg.get("dtype") or ""))
    if files:
        torch_dtype = resolve_dtype(dtype, config_dtype or _stored_dtype(files), device)
    else:
        torch_dtype = resolve_dtype(dtype, config_dtype or torch.bfloat16, device)
    if not files:
        weights = check_weights(drop_mtp_tensors(_read_pickled(pickled_files, torch_dtype), cfg), arch, str(folder))
    elif select is None:
        weights = check_weights(drop_mtp_tensors(_read_safetensors(files, torch_dtype), cfg), arch, str(folder))
    else:  # only the parts of the tensors that select takes are read from the files
        handles, slices = _safetensors_slices(files)
        kept = check_weights(drop_mtp_tensors(slices, cfg), arch, str(folder))
        weights = {n: t.to(torch_dtype) for n, t in select(kept, arch).items()}
        del handles
    tokenizer = _hf_tokenizer(folder) if with_tokenizer else None
    return LoadedCheckpoint(arch, weights, tokenizer, torch_dtype, str(folder), cfg)


def _hf_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError) as e:
        raise ValueError(
            f"could not load a tokenizer from {folder} (tokenizer.json / tokenizer_config.json expected): {e}"
        ) from e


def _load_gguf_file(path: Path, dtype: str | torch.dtype, device: str, with_tokenizer: bool = True,
                    select: Select | None = None) -> LoadedCheckpoint:
    torch_dtype = resolve_dtype(dtype, torch.bfloat16, device)
    cfg, weights, tokenizer = load_gguf(path, torch_dtype, with_tokenizer)
    arch = ModelArchConfig.from_hf_config(cfg)
    weights = check_weights(weights, arch, str(path))
    if select is not None:  # (the file was dequantized whole)
        weights = select(weights, arch)
    return LoadedCheckpoint(arch, weights, tokenizer, torch_dtype, str(path), cfg)


def load_checkpoint(
    path: str | Path, dtype: str | torch.dtype = "auto", device: str = "cpu", with_tokenizer: bool = True,
    select: Select | None = None,
) -> LoadedCheckpoint:
    """Load a local HF folder (config.json + *.safetensors + tokenizer), a .gguf file, or a folder
    holding exactly one .gguf. dtype: "auto" | "float32" | "bfloat16" | "float16" ("float", "half").
    "auto" is float32 on CPU; on other devices the checkpoint's dtype (bfloat16 for GGUF).
    Tensors are returned on CPU; `device` only steers "auto". ``with_tokenizer=False`` leaves the tokenizer
    None (a tensor-parallel worker needs only weights). ``select(weights, arch)`` returns the tensors to keep
    (one tensor-parallel rank's slices): it gets safetensors' lazy slices, indexable like tensors, so only what
    it takes is read.
    """
    resolve_dtype(dtype, None, device)  # reject a bad dtype before any reading
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"model path {str(path)!r} does not exist")
    if p.is_file():
        if p.suffix == ".gguf":
            return _load_gguf_file(p, dtype, device, with_tokenizer, select)
        if p.suffix in PICKLED_SUFFIXES:
            raise _refuse_pickled(p, [p])
        raise ValueError(
            f"model path {str(path)!r} is a file but not a .gguf; pass a .gguf file or "
            "a folder with config.json and *.safetensors"
        )
    if _safetensors_files(p) or pickled_weight_files(p):
        return _load_hf_folder(p, dtype, device, with_tokenizer, select)
    ggufs = sorted(p.glob("*.gguf"))
    if len(ggufs) == 1:
        return _load_gguf_file(ggufs[0], dtype, device, with_tokenizer, select)
    if len(ggufs) > 1:
        raise ValueError(
            f"{p} holds {len(ggufs)} .gguf files ({', '.join(g.name for g in ggufs)}); "
            "pass the path of the one to load"
        )
    return _load_hf_folder(p, dtype, device)  # raises: pickled-only or empty folder


def _checkpoint_file_or_folder(path: str | Path) -> Path:
    """The .gguf file or the HF folder that ``load_checkpoint(path)`` would read."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"model path {str(path)!r} does not exist")
    if p.is_dir() and not _safetensors_files(p):
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return ggufs[0]
    return p


def read_arch(path: str | Path) -> ModelArchConfig:
    """The architecture of a checkpoint, read from its config.json or GGUF metadata without loading weights."""
    p = _checkpoint_file_or_folder(path)
    if p.is_file() and p.suffix == ".gguf":
        from tokenleap.model.gguf_file import GGUFFile
        from tokenleap.model.gguf_loader import gguf_config

        return ModelArchConfig.from_hf_config(gguf_config(GGUFFile(p)))
    config_path = p / "config.json" if p.is_dir() else p
    if not config_path.is_file():
        raise FileNotFoundError(f"{p} has no config.json (and is not a .gguf file)")
    return ModelArchConfig.from_hf_config(json.loads(config_path.read_text()))


def load_tokenizer(path: str | Path):
    """The tokenizer of a checkpoint (HF folder or GGUF metadata), without its weights."""
    p = _checkpoint_file_or_folder(path)
    if p.is_file() and p.suffix == ".gguf":
        from tokenleap.model.gguf_file import GGUFFile
        from tokenleap.model.gguf_loader import gguf_tokenizer

        return gguf_tokenizer(p, GGUFFile(p))
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(p))
