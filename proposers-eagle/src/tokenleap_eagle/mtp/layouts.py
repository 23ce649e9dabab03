"""Finding and reading the MTP layer(s) inside the target's own checkpoint.

Two layouts on a Llama-family body (config.json ``num_nextn_predict_layers`` >= 1):

- MiMo (Qwen2 body): ``model.mtp_layers.{i}.`` + ``token_layernorm``, ``hidden_layernorm``, ``input_proj``
  (over ``concat(normed hidden, normed embedding)``), a decoder layer's tensors directly under the prefix
  (``self_attn.*``, ``mlp.*``, ``input_layernorm``, ``post_attention_layernorm``) and ``final_layernorm``; the
  logits are the target's LM head over the final-normed output, which is also the state of the next step.
- DeepSeek-V3: ``model.layers.{N + i}.`` (N = num_hidden_layers) + ``enorm``, ``hnorm``, ``eh_proj`` (over
  ``concat(normed embedding, normed hidden)``), the decoder layer's tensors, ``shared_head.norm`` and optionally
  ``shared_head.head`` / ``embed_tokens`` (else the target's); the logits are the head over the
  shared_head-normed output, and the un-normed output is the next step's state.

Only the first MTP layer drafts (vLLM does the same): each further draft reuses it on its own output state.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

DECODER_TENSORS = (
    "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
    "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
    "input_layernorm.weight", "post_attention_layernorm.weight",
)
DECODER_BIASES = ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias")
WORKING_METHODS = "ngram, suffix, draft_model (with a smaller model), eagle / eagle3 or mlp_speculator (with a head)"


class NoMTPLayersError(ValueError):
    """The target checkpoint carries no multi-token-prediction layers."""


@dataclass
class MTPWeights:
    layout: str  # "mimo" or "deepseek"
    embed_norm: torch.Tensor  # [hidden]
    hidden_norm: torch.Tensor  # [hidden]
    input_proj: torch.Tensor  # [hidden, 2 * hidden]
    embed_first: bool  # concat order of the projection's input
    output_norm: torch.Tensor  # [hidden]: applied before the LM head
    state_is_normed: bool  # the next step's state is the output after output_norm (MiMo) or before (DeepSeek)
    decoder: dict[str, torch.Tensor] = field(default_factory=dict)  # DECODER_TENSORS (+ biases) by short name
    head: torch.Tensor | None = None  # [vocab, hidden], None: the target's LM head
    embedding: torch.Tensor | None = None  # [vocab, hidden], None: the target's embedding


def _no_mtp(path: str, why: str) -> NoMTPLayersError:
    return NoMTPLayersError(
        f"speculative_config.method='mtp': the target model {path} has no multi-token-prediction (MTP) layers "
        f"({why}); 'mtp' needs a checkpoint that carries its own (MiMo's model.mtp_layers.*, or DeepSeek-V3's "
        f"eh_proj/enorm/hnorm/shared_head layers). Methods that work with this model: {WORKING_METHODS}."
    )


def _tensor_names(folder: Path) -> dict[str, Path]:
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return {n: folder / f for n, f in json.loads(index.read_text())["weight_map"].items()}
    names: dict[str, Path] = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt", device="cpu") as st:
            names.update(dict.fromkeys(st.keys(), f))
    return names


def _read(where: dict[str, Path], wanted: list[str], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    out: dict[str, torch.Tensor] = {}
    by_file: dict[Path, list[str]] = {}
    for n in wanted:
        by_file.setdefault(where[n], []).append(n)
    for f, names in by_file.items():
        with safe_open(str(f), framework="pt", device="cpu") as st:
            for n in names:
                out[n] = st.get_tensor(n).to(dtype)
    return out


def find_mtp_layer(model_path: str) -> tuple[str, str, dict[str, Path], list[str], list[str]]:
    """(layout, tensor prefix, tensor name -> file, names to read, bias names) of the first MTP layer, from
    config.json and the safetensors headers only; raises NoMTPLayersError when the checkpoint has none."""
    p = Path(model_path)
    if not p.is_dir():
        raise _no_mtp(model_path, "a single-file checkpoint (GGUF) carries none")
    cfg_path = p / "config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    if not cfg.get("num_nextn_predict_layers"):
        raise _no_mtp(model_path, f"config.json num_nextn_predict_layers={cfg.get('num_nextn_predict_layers')!r}")
    where = _tensor_names(p)
    n = int(cfg["num_hidden_layers"])
    bias = list(DECODER_BIASES) if cfg.get("attention_bias", cfg.get("model_type") in ("qwen2", "mimo")) else []
    mimo, ds = "model.mtp_layers.0.", f"model.layers.{n}."
    if mimo + "input_proj.weight" in where:
        names = ["token_layernorm.weight", "hidden_layernorm.weight", "input_proj.weight", "final_layernorm.weight"]
        prefix, layout = mimo, "mimo"
    elif ds + "eh_proj.weight" in where:
        names = ["enorm.weight", "hnorm.weight", "eh_proj.weight", "shared_head.norm.weight"]
        names += [x for x in ("shared_head.head.weight", "embed_tokens.weight") if ds + x in where]
        prefix, layout = ds, "deepseek"
    else:
        raise _no_mtp(model_path, f"config.json says num_nextn_predict_layers={cfg['num_nextn_predict_layers']}, "
                      f"but it holds neither {mimo}input_proj.weight nor {ds}eh_proj.weight")
    bias = [b for b in bias if prefix + b in where]
    full = [prefix + x for x in names + list(DECODER_TENSORS) + bias]
    missing = [x for x in full if x not in where]
    if missing:
        raise ValueError(f"the target's MTP layer ({layout} layout) in {model_path} lacks {missing[:5]}")
    return layout, prefix, where, full, bias


def load_mtp_weights(model_path: str, dtype: torch.dtype) -> MTPWeights:
    """The first MTP layer of the target's checkpoint; raises NoMTPLayersError when it has none."""
    layout, prefix, where, full, bias = find_mtp_layer(model_path)
    t = {k.removeprefix(prefix): v for k, v in _read(where, full, dtype).items()}
    decoder = {k: t[k] for k in list(DECODER_TENSORS) + bias}
    if layout == "mimo":
        return MTPWeights("mimo", t["token_layernorm.weight"], t["hidden_layernorm.weight"], t["input_proj.weight"],
                          False, t["final_layernorm.weight"], True, decoder)
    return MTPWeights("deepseek", t["enorm.weight"], t["hnorm.weight"], t["eh_proj.weight"], True,
                      t["shared_head.norm.weight"], False, decoder, t.get("shared_head.head.weight"),
                      t.get("embed_tokens.weight"))
