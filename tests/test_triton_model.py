"""The whole model on the Triton ops (attention, fused small ops, few-row linears) against the torch references,
in the Triton interpreter on CPU: greedy tokens equal and logprobs close, for steps of at most MAX_ROWS tokens
(few-row kernels) and more (norm kernel + cuBLAS / torch linear), plain and speculative."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton

import pytest  # noqa: E402
from helpers.tiny_models import make_tiny_checkpoint  # noqa: E402
from helpers.triton_marks import TRITON_MARKS  # noqa: E402
from tokenleap import LLM, SamplingParams  # noqa: E402

pytestmark = [*TRITON_MARKS, pytest.mark.usefixtures("torch_one_thread")]

PROMPTS = [  # 5 tokens: every step has few rows; 40 tokens: the prefill has more than MAX_ROWS
    {"prompt_token_ids": [5, 9, 14, 3, 27]},
    {"prompt_token_ids": [(7 * i) % 150 + 3 for i in range(32)] + [11, 12, 13, 14] * 2},
]


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])  # qwen2: q/k/v biases, tied embeddings
@pytest.mark.parametrize("spec", [None, {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 2}])
def test_triton_ops_match_torch_ops(tmp_path, model_type, spec):
    from tokenleap.kernels.triton_linear import MAX_ROWS

    assert len(PROMPTS[1]["prompt_token_ids"]) > MAX_ROWS >= len(PROMPTS[0]["prompt_token_ids"]) + 8
    folder = make_tiny_checkpoint(tmp_path, model_type)
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, logprobs=0)
    outs = {}
    for backend in ("torch", "triton"):
        llm = LLM(model=str(folder), attention_backend=backend, speculative_config=spec, disable_log_stats=True,
                  num_gpu_blocks_override=64, block_size=16)
        assert llm.engine.backend == backend
        outs[backend] = llm.generate(PROMPTS, params, use_tqdm=False)
    for ref, got in zip(outs["torch"], outs["triton"]):
        assert got.outputs[0].token_ids == ref.outputs[0].token_ids
        for lp_ref, lp_got, tok in zip(ref.outputs[0].logprobs, got.outputs[0].logprobs, ref.outputs[0].token_ids):
            assert lp_got[tok].logprob == pytest.approx(lp_ref[tok].logprob, abs=1e-4)
