"""EAGLE heads in every public layout load and keep decoding lossless; bad checkpoints fail clearly.

Each head is random and written by tests/helpers/eagle_heads.py in that layout's exact tensor names, shapes and
config keys. Greedy output with the head must equal plain decoding token for token, at batch 1 and 8, k 1/3/5.
"""

from __future__ import annotations

import json
import random

import pytest
import torch
from tokenleap import LLM, SamplingParams
from tokenleap_eagle.checkpoint import load_head

from tests.helpers.eagle_heads import write_eagle1_head, write_eagle3_head, write_speculators_eagle3_head
from tests.helpers.malicious_pickle import RunsCode
from tests.helpers.tiny_models import TINY_VOCAB, make_tiny_checkpoint

HIDDEN = 64
MAX_TOKENS = 12
GREEDY = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0)


def _prompts(n: int = 20, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt_token_ids": [1] + [rng.randrange(3, 300) for _ in range(rng.randrange(2, 30))]}
            for _ in range(n)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eagle-layouts")
    target = make_tiny_checkpoint(tmp, "llama", num_hidden_layers=4, initializer_range=0.3)
    heads = {
        "eagle-bin": ("eagle", write_eagle1_head(tmp / "eagle1", HIDDEN, TINY_VOCAB, seed=1, fmt="bin")),
        "eagle3-bin": ("eagle3", write_eagle3_head(tmp / "eagle3", HIDDEN, TINY_VOCAB, 96, seed=2, fmt="bin")),
        "speculators": ("eagle3", write_speculators_eagle3_head(tmp / "spec", HIDDEN, TINY_VOCAB, 96, seed=3,
                                                                aux_layers=[0, 2, 3], norm_before_residual=True)),
    }
    plain = LLM(model=str(target), max_num_seqs=8)
    reference = [list(o.outputs[0].token_ids)
                 for o in plain.generate(_prompts(), GREEDY, use_tqdm=False)]
    return target, heads, reference


@pytest.mark.parametrize("layout", ["eagle-bin", "eagle3-bin", "speculators"])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_greedy_output_equals_plain_decoding(tiny, layout, k):
    target, heads, reference = tiny
    method, folder = heads[layout]
    for batch in (1, 8):
        llm = LLM(model=str(target), max_num_seqs=batch,
                  speculative_config={"method": method, "model": str(folder), "num_speculative_tokens": k})
        out = [list(o.outputs[0].token_ids)
               for o in llm.generate(_prompts(), GREEDY, use_tqdm=False)]
        assert out == reference, (layout, k, batch)
        spec = llm.engine.counters.spec
        assert spec.num_draft_tokens > 0  # the head drafted
        assert llm.engine.driver.proposer.first.used()  # verify steps took the padded catch-up


def test_layouts_are_detected_with_their_settings(tiny):
    _, heads, _ = tiny
    e1 = load_head(heads["eagle-bin"][1])
    assert (e1.cfg.kind, e1.cfg.layout, e1.cfg.fc_bias, e1.fc.weight.shape) == ("eagle", "eagle", True, (64, 128))
    e3 = load_head(heads["eagle3-bin"][1], max_model_len=4096)
    assert (e3.cfg.kind, e3.cfg.layout, e3.cfg.draft_vocab_size) == ("eagle3", "eagle3", 96)
    assert e3.cfg.layer.max_position_embeddings == 4096  # raised to the target's max_model_len
    assert e3.qkv_proj.weight.shape[1] == 2 * HIDDEN and e3.fc.weight.shape == (HIDDEN, 3 * HIDDEN)
    sp = load_head(heads["speculators"][1])
    assert (sp.cfg.layout, sp.cfg.aux_layer_ids, sp.cfg.norm_before_residual) == ("speculators", (0, 2, 3), True)
    # d2t maps the draft vocabulary onto the t2d set of target ids
    from safetensors.torch import load_file

    t2d = load_file(str(heads["speculators"][1] / "model.safetensors"))["t2d"]
    assert torch.equal(torch.nonzero(t2d).flatten(), sp.target_ids())


def test_method_key_overrides_aux_layers(tiny):
    target, heads, _ = tiny
    llm = LLM(model=str(target), speculative_config={
        "method": "eagle3", "model": str(heads["eagle3-bin"][1]), "num_speculative_tokens": 2,
        "eagle_aux_hidden_state_layer_ids": [1, 2, 3]})
    assert llm.engine.driver.proposer.needs.hidden_state_layers == (1, 2, 3)
    default = LLM(model=str(target), speculative_config={
        "method": "eagle3", "model": str(heads["eagle3-bin"][1]), "num_speculative_tokens": 2})
    assert default.engine.driver.proposer.needs.hidden_state_layers == (2, 2, 1)  # (2, N // 2, N - 3), N = 4


# ---- bad checkpoints ----

def _spec(folder, method="eagle3"):
    return {"method": method, "model": str(folder), "num_speculative_tokens": 3}


def test_wrong_hidden_size_names_both_values(tiny, tmp_path):
    target, _, _ = tiny
    folder = write_eagle3_head(tmp_path / "h96", 96, TINY_VOCAB, 50)
    with pytest.raises(ValueError) as err:
        LLM(model=str(target), speculative_config=_spec(folder))
    assert "target_hidden_size=96" in str(err.value) and "hidden_size=64" in str(err.value)
    folder = write_eagle1_head(tmp_path / "e96", 96, TINY_VOCAB)
    with pytest.raises(ValueError) as err:
        LLM(model=str(target), speculative_config=_spec(folder, "eagle"))
    assert "hidden_size=96" in str(err.value) and "hidden_size=64" in str(err.value)


def test_wrong_vocabulary_names_both_values(tiny, tmp_path):
    target, _, _ = tiny
    folder = write_eagle3_head(tmp_path / "v", HIDDEN, TINY_VOCAB + 10, 50)
    with pytest.raises(ValueError) as err:
        LLM(model=str(target), speculative_config=_spec(folder))
    assert f"vocab_size={TINY_VOCAB + 10}" in str(err.value) and f"vocab_size={TINY_VOCAB}" in str(err.value)


def test_head_count_that_does_not_match_the_tensors(tmp_path):
    folder = write_eagle3_head(tmp_path / "heads", HIDDEN, TINY_VOCAB, 50)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["num_attention_heads"] = 8  # the tensors were written for 4 heads of 16
    cfg["head_dim"] = 16
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError) as err:
        load_head(folder)
    msg = str(err.value)
    assert "midlayer.self_attn.q_proj.weight" in msg and "(64, 128)" in msg and "(128, 128)" in msg
    assert "num_attention_heads=8" in msg


def test_missing_tensors_are_named(tmp_path):
    folder = write_eagle3_head(tmp_path / "m", HIDDEN, TINY_VOCAB, 50, fmt="safetensors")
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["midlayer.hidden_norm.weight"], tensors["d2t"]
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(ValueError) as err:
        load_head(folder)
    assert "lacks 2 tensor(s)" in str(err.value) and "d2t" in str(err.value) and "hidden_norm" in str(err.value)


def test_method_and_layout_must_agree(tiny):
    target, heads, _ = tiny
    with pytest.raises(ValueError) as err:
        LLM(model=str(target), speculative_config=_spec(heads["eagle-bin"][1], "eagle3"))
    assert "is an 'eagle' head" in str(err.value) and "use method 'eagle'" in str(err.value)


def test_pickle_with_code_is_refused_without_running_it(tmp_path):
    folder = write_eagle1_head(tmp_path / "evil", HIDDEN, TINY_VOCAB)
    tensors = torch.load(folder / "pytorch_model.bin", weights_only=True)
    marker = tmp_path / "pwned"
    tensors["fc.bias"] = RunsCode(marker)
    torch.save(tensors, folder / "pytorch_model.bin")
    with pytest.raises(ValueError) as err:
        load_head(folder)
    assert not marker.exists()
    assert "weights_only=True" in str(err.value) and "arbitrary code" in str(err.value)


def test_entry_points_name_their_methods():
    from tokenleap_eagle.plugin import EAGLE, EAGLE3
    from tokenleap_plugins.testing import check_entry_point

    assert check_entry_point(EAGLE) and check_entry_point(EAGLE3)
    assert EAGLE.requires_model
    assert EAGLE.common_keys == frozenset({"model", "max_model_len", "draft_tensor_parallel_size"})


def test_unknown_method_key_is_refused(tiny):
    target, heads, _ = tiny
    with pytest.raises(Exception) as err:
        LLM(model=str(target), speculative_config={**_spec(heads["eagle3-bin"][1]), "eagle_layers": [1, 2, 3]})
    assert "eagle_layers" in str(err.value)
