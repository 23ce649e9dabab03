"""Reading an MLP speculator checkpoint: a folder with config.json (``model_type: "mlp_speculator"``) and
*.safetensors, tensors named ``emb.{i}.weight``, ``proj.{i}.weight``, ``head.{i}.weight``, ``ln.{i}.weight`` /
``ln.{i}.bias`` (optionally under ``speculator.``), or the alias of a speculator this package ships."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from tokenleap_eagle.mlp_speculator.model import MLPSpeculator, MLPSpeculatorConfig

# Aliases of the speculators shipped in tokenleap_eagle/heads/<alias>/ (trained by train/mlp_speculator.py).
SHIPPED_SPECULATORS = {"smollm2-135m-instruct-mlp": "smollm2-135m-instruct-mlp"}
_PREFIX = "speculator."


def resolve_speculator(name: str) -> Path:
    """A shipped alias -> its folder in the package; else a local path or a core model alias."""
    if name in SHIPPED_SPECULATORS:
        return Path(str(resources.files("tokenleap_eagle") / "heads" / SHIPPED_SPECULATORS[name]))
    from tokenleap.model.hub import resolve_model

    try:
        return resolve_model(name, progress=False)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"speculative_config.model={name!r} is neither an existing local folder nor a known MLP speculator "
            f"alias (shipped: {sorted(SHIPPED_SPECULATORS)})"
        ) from None


def read_config(folder: Path) -> MLPSpeculatorConfig:
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"MLP speculator {folder} has no config.json")
    raw: dict[str, Any] = json.loads(path.read_text())
    if raw.get("model_type") != "mlp_speculator":
        raise ValueError(
            f"{path}: model_type={raw.get('model_type')!r}; an MLP speculator checkpoint has "
            "model_type 'mlp_speculator' (for an EAGLE head use method 'eagle' or 'eagle3')"
        )
    for key in ("emb_dim", "vocab_size", "n_predict"):
        if not isinstance(raw.get(key), int) or raw[key] < 1:
            raise ValueError(f"{path}: {key}={raw.get(key)!r}; expected a positive integer")
    inner = raw.get("inner_dim", 0) or raw["emb_dim"]
    tie = bool(raw.get("tie_weights", False))
    if tie and raw["n_predict"] < 2:
        raise ValueError(f"{path}: tie_weights=true needs n_predict >= 2 (got n_predict={raw['n_predict']})")
    top_k = raw.get("top_k_tokens_per_head") or []
    return MLPSpeculatorConfig(
        emb_dim=raw["emb_dim"], inner_dim=int(inner), vocab_size=raw["vocab_size"], n_predict=raw["n_predict"],
        tie_weights=tie, scale_input=bool(raw.get("scale_input", False)),
        top_k_tokens_per_head=tuple(int(x) for x in top_k),
    )


def _read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ValueError(f"MLP speculator {folder} has no *.safetensors weights")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        for name, t in load_file(str(f)).items():
            tensors[name.removeprefix(_PREFIX)] = t
    return tensors


def load_speculator(folder: Path, dtype: torch.dtype, device: str | torch.device) -> MLPSpeculator:
    """Build the speculator of ``folder`` with its weights; missing tensors or wrong shapes fail by name."""
    cfg = read_config(folder)
    tensors = _read_tensors(folder)
    model = MLPSpeculator(cfg)
    params = dict(model.named_parameters())  # tied stages appear once, under stage 0 (proj: 0 and 1)
    missing = sorted(set(params) - set(tensors))
    if missing:
        raise ValueError(f"MLP speculator {folder} lacks {len(missing)} tensor(s), e.g. {missing[:5]}")
    stage_names = ("emb.", "proj.", "head.", "ln.")
    unexpected = sorted(n for n in set(tensors) - set(params) if not (cfg.tie_weights and n.startswith(stage_names)))
    if unexpected:
        raise ValueError(f"MLP speculator {folder} has tensor(s) it does not use: {unexpected[:5]}")
    with torch.no_grad():
        for name, p in params.items():
            t = tensors[name]
            if tuple(t.shape) != tuple(p.shape):
                raise ValueError(
                    f"MLP speculator {folder}: {name} has shape {tuple(t.shape)}, config.json implies {tuple(p.shape)}"
                )
            p.copy_(t)
    return model.to(device=device, dtype=dtype).eval()


def save_speculator(model: MLPSpeculator, folder: Path, dtype: torch.dtype = torch.bfloat16) -> None:
    """Write config.json and model.safetensors (unique tensors only) in the layout ``load_speculator`` reads."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(model.cfg.to_json(), indent=2) + "\n")
    tensors = {n: p.detach().to("cpu", dtype).contiguous() for n, p in model.named_parameters()}
    save_file(tensors, str(folder / "model.safetensors"))
