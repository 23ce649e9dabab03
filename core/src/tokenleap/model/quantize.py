"""Weight-only quantization of a loaded model for the CPU fast path (``LLM(..., quantization="int8" | "int4")``).

Every decoder linear (qkv, o, gate/up, down) gets a packed weight (``kernels/cpu_linear``) in the format asked
for; the LM head gets an int8 one in either format (the output layer is the one GGUF files keep at 8 bits or
more: SmolLM2's Q4_1 file stores it as Q8_0); with tied embeddings it becomes its own packed copy of the
embedding, which stays bfloat16 for the lookup. A weight the int4 kernel cannot take (N not a multiple of 16)
stays a bfloat16 tensor. The weights are packed from the float32 checkpoint values, then every remaining
parameter is cast to bfloat16.
"""

from __future__ import annotations

import torch
from torch import nn

from tokenleap.kernels.cpu_linear import WEIGHT_FORMATS, PackedWeight, pack_weight
from tokenleap.model.llama import LlamaForCausalLM

LM_HEAD_FORMAT = "int8"


class PackedLinear(nn.Module):
    """Holds a packed weight where an ``nn.Linear`` held its tensor (the ops read ``.weight`` and ``.bias``)."""

    def __init__(self, weight: PackedWeight) -> None:
        super().__init__()
        self.weight = weight
        self.bias = None


def _swap(linear: nn.Linear, fmt: str) -> None:
    packed = pack_weight(linear.weight.detach(), fmt)
    if packed is not None:
        del linear.weight
        linear.weight = packed  # a plain attribute now, not a parameter


@torch.no_grad()
def quantize_model_(model: LlamaForCausalLM, fmt: str) -> None:
    """Pack ``model``'s linears in place (from their float32 values) and cast the rest to bfloat16."""
    if fmt not in WEIGHT_FORMATS:
        raise ValueError(f"quantization={fmt!r} is not one of {WEIGHT_FORMATS}")
    for p in model.parameters():
        if p.dtype != torch.float32:
            raise ValueError(f"quantize_model_ packs float32 weights; this model's are {p.dtype}")
    for layer in model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        for linear in (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj):
            _swap(linear, fmt)
    head = model.embed_tokens.weight if model.lm_head is None else model.lm_head.weight
    model.lm_head = PackedLinear(pack_weight(head.detach(), LM_HEAD_FORMAT))
    model.to(torch.bfloat16)


def dense_weight(weight: torch.Tensor | PackedWeight) -> torch.Tensor:
    """A linear's weight as a bfloat16 / float tensor [N, K]: itself, or a packed one dequantized."""
    return weight if isinstance(weight, torch.Tensor) else weight.dequantize().to(weight.dtype)
