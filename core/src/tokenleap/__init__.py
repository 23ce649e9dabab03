"""tokenleap: an LLM inference engine built around lossless speculative decoding.

The public names are imported on first use (PEP 562), so that ``tokenleap --help`` and other light commands do
not pay for torch and transformers.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

# oneDNN's AMX kernels (Intel Xeon of the 4th generation and later) give a row of a bfloat16 matmul other low bits
# in a batch of rows than alone, so the CPU path's verify steps would not reproduce its decode steps and speculative
# output would differ from plain decoding; its AVX-512 kernels do not (kernels/cpu_linear.py). oneDNN reads this
# once, at its first use in the process; a value the user set is kept.
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")

if TYPE_CHECKING:
    from tokenleap.async_llm import AsyncLLM
    from tokenleap.engine_core.async_client import ProcessAsyncLLM
    from tokenleap.inputs import TextPrompt, TokensPrompt
    from tokenleap.llm import LLM
    from tokenleap.outputs import CompletionOutput, Logprob, RequestOutput
    from tokenleap.sampling_params import SamplingParams
    from tokenleap.structured.params import StructuredOutputsParams

_EXPORTS = {
    "LLM": "tokenleap.llm",
    "AsyncLLM": "tokenleap.async_llm",
    "ProcessAsyncLLM": "tokenleap.engine_core.async_client",
    "StructuredOutputsParams": "tokenleap.structured.params",
    "CompletionOutput": "tokenleap.outputs",
    "Logprob": "tokenleap.outputs",
    "RequestOutput": "tokenleap.outputs",
    "SamplingParams": "tokenleap.sampling_params",
    "TextPrompt": "tokenleap.inputs",
    "TokensPrompt": "tokenleap.inputs",
}
__all__ = ["LLM", "AsyncLLM", "ProcessAsyncLLM", "CompletionOutput", "Logprob", "RequestOutput", "SamplingParams",
           "StructuredOutputsParams", "TextPrompt", "TokensPrompt"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tokenleap' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
