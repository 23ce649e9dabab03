"""Method ``draft_model`` (proposers-draft): a smaller model drafts on its own paged KV cache.

Greedy output equals plain decoding exactly, at batch 1 and 8 and k in {1, 3, 5}, with chunked prefill,
preemption and prefix caching exercised; a draft that is the target itself gets (nearly) every draft accepted,
which only happens when its KV cache follows the target's through all of those; sampling keeps the target's
distribution (a two-sample test of token marginals); bad drafts fail before any weights load.
"""

from __future__ import annotations

import random

import pytest
import torch
from tokenleap import LLM, SamplingParams

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SHARED = [random.Random(7).randrange(3, 300) for _ in range(40)]  # a prefix the prompts share (prefix caching)


def make_prompts(n: int = 20) -> list[dict]:
    rng = random.Random(0)
    out = []
    for i in range(n):
        body = [rng.randrange(3, 300) for _ in range(rng.randrange(4, 30))] + [11, 12, 13] * (i % 3)
        out.append({"prompt_token_ids": (SHARED if i % 2 else []) + body})
    return out


PROMPTS = make_prompts()
GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


@pytest.fixture(scope="module")
def target(tiny_checkpoint):
    return str(tiny_checkpoint("llama"))


@pytest.fixture(scope="module")
def small_draft(tiny_checkpoint):
    """A different, smaller random model with the target's vocabulary and tokenizer."""
    return str(tiny_checkpoint("llama", num_hidden_layers=1, hidden_size=32, intermediate_size=64,
                               num_attention_heads=2, num_key_value_heads=1))


@pytest.fixture(scope="module")
def near_draft(target, tmp_path_factory):
    """The target with noise added to every weight: a draft that agrees with it often, not always."""
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path_factory.mktemp("near") / "near-draft"
    shutil.copytree(target, folder)
    gen = torch.Generator().manual_seed(3)
    weights = load_file(str(folder / "model.safetensors"))
    noisy = {k: v + 0.08 * v.std() * torch.randn(v.shape, generator=gen) if v.ndim == 2 else v
             for k, v in weights.items()}
    save_file(noisy, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return str(folder)


def build(target: str, spec: dict | None = None, **kwargs) -> LLM:
    kwargs.setdefault("num_gpu_blocks_override", 512)
    return LLM(target, speculative_config=spec, disable_log_stats=True, **kwargs)


def token_ids(outputs) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in outputs]


def acceptance(llm: LLM) -> tuple[int, int]:
    c = llm.engine.counters.spec
    return c.num_draft_tokens, c.num_accepted_tokens


@pytest.fixture(scope="module")
def plain(target):
    return token_ids(build(target).generate(PROMPTS, GREEDY, use_tqdm=False))


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_greedy_equals_plain_with_a_small_draft(target, small_draft, plain, batch, k):
    """Prompts of up to 70 tokens under a 32-token budget: chunked prefill; half share a 40-token prefix: prefix
    caching; at batch 8 a 14-block KV cache holds about three requests: preemption."""
    llm = build(target, {"method": "draft_model", "model": small_draft, "num_speculative_tokens": k},
                max_num_seqs=batch, max_num_batched_tokens=32, num_gpu_blocks_override=14)
    assert token_ids(llm.generate(PROMPTS, GREEDY, use_tqdm=False)) == plain
    assert llm.engine.blocks.prefix_hits > 0
    assert batch == 1 or llm.engine.counters.num_preemptions > 0
    drafts, accepted = acceptance(llm)
    assert drafts > 0 and 0 < accepted < drafts  # a real draft: some accepted, some not
    assert llm.engine.blocks.num_free_blocks == llm.engine.blocks.num_usable_blocks  # nothing leaked


@pytest.mark.parametrize("k", [3, 5])
def test_the_target_as_its_own_draft_is_accepted_through_preemption_and_prefix_caching(target, plain, k):
    """Draft == target: every draft is the target's own argmax unless the draft's KV cache differs from the target's
    somewhere. Chunked prefill (32-token budget), prefix-cache hits (half the prompts share 40 tokens) and
    preemption (a KV cache too small for 8 requests) all run; acceptance stays >= 99%."""
    llm = build(target, {"method": "draft_model", "model": target, "num_speculative_tokens": k},
                max_num_seqs=8, max_num_batched_tokens=32, num_gpu_blocks_override=12, block_size=16)
    assert token_ids(llm.generate(PROMPTS, GREEDY, use_tqdm=False)) == plain
    m = {x.name: x for x in llm.get_metrics()}
    assert m["tokenleap:num_preemptions"].value > 0
    assert m["tokenleap:prefix_cache_hits"].value > 0
    drafts, accepted = acceptance(llm)
    assert drafts > 100 and accepted >= 0.99 * drafts, (drafts, accepted)
    assert llm.engine.blocks.num_free_blocks == llm.engine.blocks.num_usable_blocks


def _chi2_sf(stat: float, dof: int) -> float:
    """P(chi-square(dof) >= stat): the regularized upper incomplete gamma Q(dof / 2, stat / 2)."""
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64)))


def homogeneity_p_value(a: list[int], b: list[int]) -> float:
    """Two-sample chi-square test that a and b (token ids) come from one distribution; tokens seen fewer than 10
    times in both samples together are pooled into one cell."""
    counts: dict[int, list[int]] = {}
    for j, sample in enumerate((a, b)):
        for t in sample:
            counts.setdefault(t, [0, 0])[j] += 1
    cells, pooled = [], [0, 0]
    for c in counts.values():
        if sum(c) < 10:
            pooled[0] += c[0]
            pooled[1] += c[1]
        else:
            cells.append(c)
    if sum(pooled):
        cells.append(pooled)
    n = [len(a), len(b)]
    total = sum(n)
    stat = 0.0
    for c in cells:
        for j in range(2):
            expected = n[j] * sum(c) / total
            stat += (c[j] - expected) ** 2 / expected
    return _chi2_sf(stat, len(cells) - 1)


@pytest.mark.parametrize("verification", ["rejection", "coupled"])
def test_sampling_keeps_the_target_distribution(target, near_draft, verification):
    """Temperature 1 with top-k 6: 3,000 seeded requests per side; the marginal of each of the first 4 output
    tokens, speculative (drafts sampled with their probabilities; verified by rejection sampling, or by coupling
    with drafts drawn from the target's noise) against plain, by a two-sample chi-square test at a family-wise
    level of 0.001 (Bonferroni: each test at 0.001 / 4). Plain and speculative use disjoint seeds, so the two
    samples are independent."""
    n, positions = 3000, 4
    prompt = [{"prompt_token_ids": [5, 17, 42, 9, 17, 42]}] * n
    spec = build(target, {"method": "draft_model", "model": near_draft, "num_speculative_tokens": 3,
                          "draft_verification": verification})
    plain = build(target)

    def sample(llm, seed0):
        params = [SamplingParams(temperature=1.0, top_k=6, max_tokens=positions, ignore_eos=True, seed=seed0 + i)
                  for i in range(n)]
        return token_ids(llm.generate(prompt, params, use_tqdm=False))

    a, b = sample(plain, 0), sample(spec, 10_000)
    drafts, accepted = acceptance(spec)
    assert drafts > 1000 and 0.2 * drafts < accepted < 0.9 * drafts, (drafts, accepted)  # both ways, often
    for j in range(positions):
        p = homogeneity_p_value([t[j] for t in a], [t[j] for t in b])
        assert p > 0.001 / positions, f"position {j}: p = {p:.2e}"


def test_homogeneity_test_detects_a_different_distribution():
    """The test above can fail: two samples from distributions 0.5/0.5 and 0.58/0.42 (3,000 each) are told apart."""
    rng = random.Random(1)
    a = [int(rng.random() < 0.5) for _ in range(3000)]
    b = [int(rng.random() < 0.42) for _ in range(3000)]
    assert homogeneity_p_value(a, b) < 0.001 / 4
    c = [int(rng.random() < 0.5) for _ in range(3000)]
    assert homogeneity_p_value(a, c) > 0.001 / 4


@pytest.mark.slow
def test_smollm2_drafting_for_itself(smollm2_path):
    """The real SmolLM2-135M-Instruct as its own draft: greedy output equals plain decoding, >= 99% accepted."""
    prompts = ["Write a haiku about the sea.", "def fibonacci(n):", "List three colours of the rainbow."]
    params = SamplingParams(temperature=0, max_tokens=32)
    common = dict(max_model_len=512, kv_cache_memory_bytes=64 << 20, disable_log_stats=True)
    plain = LLM(str(smollm2_path), **common)
    want = token_ids(plain.generate(prompts, params, use_tqdm=False))
    del plain
    spec = LLM(str(smollm2_path), speculative_config={"method": "draft_model", "model": "smollm2-135m-instruct",
                                                      "num_speculative_tokens": 4}, **common)
    assert token_ids(spec.generate(prompts, params, use_tqdm=False)) == want
    drafts, accepted = acceptance(spec)
    assert drafts > 0 and accepted >= 0.99 * drafts, (drafts, accepted)


# ---- bad configurations: each fails with its message before any weights load --------------------------------

@pytest.fixture
def no_weights(monkeypatch):
    """The target's and the draft's weight loading fail loudly: a configuration error must come first."""
    from tokenleap.engine import setup

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the configuration was rejected")

    monkeypatch.setattr(setup, "load_model", refuse)
    monkeypatch.setattr(setup, "load_weights", refuse)


@pytest.fixture(scope="module")
def other_tokenizer_draft(tiny_checkpoint, tmp_path_factory):
    """A draft of the target's vocabulary size whose tokenizer was trained on other text (other merges, ids)."""
    import shutil

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    folder = tmp_path_factory.mktemp("othertok") / "draft"
    shutil.copytree(tiny_checkpoint("llama"), folder)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(["zebra zygote zeal " * 5, "quiz quartz quill " * 5], trainer=trainer)
    tok.save(str(folder / "tokenizer.json"))
    return str(folder)


def test_bad_draft_configurations_fail_before_any_weights(no_weights, target, tiny_checkpoint,
                                                          other_tokenizer_draft):
    big_vocab = str(tiny_checkpoint("llama", vocab_size=352))
    short = str(tiny_checkpoint("llama", max_position_embeddings=128))

    def fails(spec: dict, pattern: str, **kwargs):
        with pytest.raises(ValueError, match=pattern):
            LLM(target, speculative_config={"method": "draft_model", "num_speculative_tokens": 3, **spec},
                disable_log_stats=True, **kwargs)

    fails({"model": big_vocab}, rf"speculative_config\.model='{big_vocab}' has a vocabulary of 352 tokens, the "
                                r"target 320: draft_model needs a draft with the target's tokenizer and vocabulary")
    fails({"model": other_tokenizer_draft},
          rf"speculative_config\.model='{other_tokenizer_draft}': its tokenizer and the target's disagree on "
          r"'The quick brown fox jumps over the lazy dog\.' \(draft ids \[.*\]\.\.\., target ids \[.*\]\.\.\.\): draft_model "
          r"needs a draft with the target's tokenizer")
    fails({"model": short}, rf"speculative_config\.model='{short}' has max_position_embeddings=128, below the "
                            r"target max_model_len=512; set speculative_config\.max_model_len <= 128")
    fails({"model": target, "draft_tensor_parallel_size": 2},
          r"speculative_config draft_tensor_parallel_size=2 must be 1 or the target's tensor_parallel_size=1")
    # (the target's TP, 2, shards the draft: test_tensor_parallel_speculation.py checks its refusals of drafts the
    # ranks cannot split)
    fails({}, r"speculative_config\.model is required for method 'draft_model'")
    with pytest.raises(FileNotFoundError, match="/no/such/draft"):
        LLM(target, speculative_config={"method": "draft_model", "model": "/no/such/draft",
                                        "num_speculative_tokens": 3}, disable_log_stats=True)


def test_a_short_draft_speculates_up_to_the_speculative_max_model_len(target, tiny_checkpoint, plain):
    """A draft with fewer positions than the target is fine when speculative max_model_len caps drafting there:
    past it the engine decodes without drafts, and the output is still plain decoding's."""
    short = str(tiny_checkpoint("llama", max_position_embeddings=64))
    llm = build(target, {"method": "draft_model", "model": short, "num_speculative_tokens": 3, "max_model_len": 64})
    assert token_ids(llm.generate(PROMPTS, GREEDY, use_tqdm=False)) == plain
    assert llm.engine.counters.spec.num_draft_tokens > 0


@pytest.mark.parametrize("max_num_seqs,spec_len", [(1, None), (4, None), (4, 48)])
def test_device_drafting_equals_host_drafting(target, near_draft, plain, max_num_seqs, spec_len):
    """The draft model drafts inside the verify graph (catch-up on the tokens the previous step kept at their own
    positions, then the chain; here the graphed path run eagerly on the CPU): plain decoding's tokens, the draft
    and accepted counts per position of host drafting in the same path, most verify steps launched behind the step
    before them; prompts of 4-70 tokens, prefix-cache hits, a KV cache that preempts at batch 4; with a speculative
    max_model_len (48) the device stops drafting where the host does."""
    from helpers.padded_path import assert_device_drafting_equals_host, use_padded_path
    from helpers.spec_counts import spec_totals
    from tokenleap.speculative.catch_up_drafter import CatchUpChainDrafter

    spec = {"method": "draft_model", "model": near_draft, "num_speculative_tokens": 3}
    if spec_len is not None:
        spec["max_model_len"] = spec_len

    def make_llm(device_drafting: bool) -> LLM:
        llm = build(target, spec, max_num_seqs=max_num_seqs, block_size=16, num_gpu_blocks_override=24)
        return use_padded_path(llm, 16, device_drafting=device_drafting)

    got, llm = assert_device_drafting_equals_host(make_llm, PROMPTS, [GREEDY] * len(PROMPTS), CatchUpChainDrafter)
    assert got == [list(t) for t in plain]
    drafted, accepted, _ = spec_totals(llm)
    assert 0 < accepted < drafted
