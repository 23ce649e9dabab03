"""The head-training data pipeline: ShareGPT prompts, the target's answers, captured hidden states."""

import pytest
import torch
from tokenleap_eagle.train.data import capture_hidden_states, sharegpt_prompts

from tests.helpers.tiny_models import make_tiny_checkpoint


def test_sharegpt_prompts_are_distinct_reproducible_and_exclude():
    a = sharegpt_prompts(20, seed=3)
    assert len(a) == 20 == len(set(a)) and all(isinstance(p, str) and p for p in a)
    assert sharegpt_prompts(20, seed=3) == a
    b = sharegpt_prompts(20, seed=3, exclude=[a[0]])
    assert a[0] not in b


def test_sharegpt_too_few_prompts_is_an_error():
    with pytest.raises(ValueError, match="usable ShareGPT prompts"):
        sharegpt_prompts(50, scan=10)


def test_captured_hidden_states_equal_transformers(tmp_path):
    from tokenleap.kernels.ops import layer_ops
    from tokenleap.model.llama import LlamaForCausalLM
    from tokenleap.model.loader import load_checkpoint
    from transformers import AutoModelForCausalLM

    folder = make_tiny_checkpoint(tmp_path, "llama", num_hidden_layers=3)
    ckpt = load_checkpoint(folder)
    model = LlamaForCausalLM(ckpt.arch, 128, layer_ops("torch"))
    model.load_hf_weights(ckpt.weights)
    hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    seqs = [[1, 5, 9, 30, 44, 7, 8, 100, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], [1, 60, 61, 62, 70]]
    aux, final = capture_hidden_states(model, seqs, layers=(0, 1, 2, -1), block_size=4)
    row = 0
    for s in seqs:
        out = hf(torch.tensor([s]), output_hidden_states=True).hidden_states  # [embed, after layer 0, ...]
        for layer in (0, 1, 2):
            torch.testing.assert_close(aux[layer][row:row + len(s)], out[layer][0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(final[row:row + len(s)], out[-1][0], atol=1e-4, rtol=1e-4)
        row += len(s)
    assert aux[-1].shape == final.shape == (row, 64)


def test_sharegpt_all_turns_adds_later_turns():
    """In the first 100 conversations: 56 first turns, 292 turns in all (every first turn among them)."""
    first = sharegpt_prompts(56, scan=100)
    every = sharegpt_prompts(292, scan=100, turns="all")
    assert len(set(every)) == 292 and set(first) < set(every)
    with pytest.raises(ValueError, match=r"only 56 usable ShareGPT prompts \(first turns\)"):
        sharegpt_prompts(57, scan=100)
    with pytest.raises(ValueError, match=r"turns='second': allowed first, all"):
        sharegpt_prompts(5, turns="second")


def test_answers_generated_in_waves_equal_one_batch(tmp_path, torch_one_thread):
    """Waves of 3 prompts (shortest first) give each prompt the answer one continuous batch gives it, in the
    prompts' order; a wave size below 1 is refused."""
    from tokenleap import LLM
    from tokenleap_eagle.train.data import generate_sequences

    folder = make_tiny_checkpoint(tmp_path, "llama", num_hidden_layers=2)
    llm = LLM(model=str(folder), device="cpu", max_num_seqs=4, disable_log_stats=True)
    prompts = ["the cat sat on the mat and then it", "a b", "hello world", "one two three four five six seven",
               "x", "def f(a, b): return a +", "the quick brown fox jumps over"]
    together = generate_sequences(llm, prompts, max_tokens=12, progress=False)
    waves = generate_sequences(llm, prompts, max_tokens=12, progress=False, wave_size=3)
    assert len(together) == len(prompts) and waves == together
    with pytest.raises(ValueError, match="wave_size=0: must be at least 1"):
        generate_sequences(llm, prompts, max_tokens=4, progress=False, wave_size=0)
