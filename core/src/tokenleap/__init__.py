"""tokenleap: an LLM inference engine built around lossless speculative decoding."""

from tokenleap.async_llm import AsyncLLM
from tokenleap.inputs import TextPrompt, TokensPrompt
from tokenleap.llm import LLM
from tokenleap.outputs import CompletionOutput, Logprob, RequestOutput
from tokenleap.sampling_params import SamplingParams
from tokenleap.structured.params import StructuredOutputsParams

__all__ = ["LLM", "AsyncLLM", "CompletionOutput", "Logprob", "RequestOutput", "SamplingParams", "StructuredOutputsParams",
           "TextPrompt", "TokensPrompt"]
__version__ = "0.1.0"
