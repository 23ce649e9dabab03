"""Model-based proposers with a tensor-parallel target (CPU, gloo): at tensor_parallel_size=2 every proposer's drafts,
and so the tokens, are those of TP = 1 (greedy and seeded sampling, continuous batching, preemption).

- draft TP 1: draft_model, EAGLE-3, EAGLE-1 (the target's embedding and LM head shared through the handles, which
  run on both ranks), MLP speculator and MTP run whole on rank 0 beside the sharded target, reading its hidden states;
- draft TP 2: the draft model is sharded like the target, its KV cache split by KV heads on both ranks, every draft
  forward and logits call run on both ranks; a dead worker still ends the engine within seconds;
- bad settings (draft heads / KV heads / MLP the ranks cannot split, a sharded head) fail before any process starts.
"""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path

import pytest
import torch
from tokenleap import LLM
from tokenleap.distributed.launcher import TensorParallelWorkerError

from tests.helpers.eagle_heads import write_eagle1_head, write_eagle3_head
from tests.helpers.tiny_heads import add_mtp_layer, make_tiny_speculator
from tests.helpers.tiny_models import TINY_VOCAB, make_tiny_checkpoint
from tests.test_tensor_parallel import (
    ENGINE,
    PARAMS,
    PROMPTS,
    assert_killed_worker_ends_the_engine,
    assert_same,
    children,
)

pytestmark = pytest.mark.usefixtures("torch_one_thread")

K = 3


@pytest.fixture(scope="module")
def models(tiny_checkpoint, tmp_path_factory):
    """The tiny target (4 heads, 2 KV heads: split over 2 ranks), a draft near it (the target's weights plus
    noise: many drafts accepted, not all), heads for it, and the target with an MTP layer."""
    from safetensors.torch import load_file, save_file

    tmp = tmp_path_factory.mktemp("tp-spec")
    target = tiny_checkpoint("llama")
    near = make_tiny_checkpoint(tmp, "llama", initializer_range=0.3, name="near-draft")
    gen = torch.Generator().manual_seed(3)
    weights = load_file(str(Path(target) / "model.safetensors"))
    save_file({k: v + 0.03 * v.std() * torch.randn(v.shape, generator=gen) if v.ndim == 2 else v
               for k, v in weights.items()}, str(near / "model.safetensors"), metadata={"format": "pt"})
    mtp_target = add_mtp_layer(make_tiny_checkpoint(tmp / "mtp", "llama", initializer_range=0.3), "deepseek")
    return {
        "target": str(target),
        "draft_model": str(near),
        "eagle3": str(write_eagle3_head(tmp / "eagle3", 64, TINY_VOCAB, 96, seed=2)),
        "eagle": str(write_eagle1_head(tmp / "eagle1", 64, TINY_VOCAB, seed=1, with_embedding=False)),
        "mlp_speculator": str(make_tiny_speculator(tmp / "mlp", n_predict=K)),
        "mtp": str(mtp_target),
    }


def spec_for(models: dict, method: str, draft_tp: int = 1) -> tuple[str, dict]:
    """(target folder, speculative_config) of a method."""
    if method == "mtp":
        return models["mtp"], {"method": "mtp", "num_speculative_tokens": 1, "draft_tensor_parallel_size": draft_tp}
    return models["target"], {"method": method, "model": models[method], "num_speculative_tokens": K,
                              "draft_tensor_parallel_size": draft_tp}


class Recorder:
    """Stands in for ``proposer.propose``, keeping every draft it returned."""

    def __init__(self, propose) -> None:
        self.propose, self.drafts = propose, []

    def __call__(self, batch):
        out = self.propose(batch)
        self.drafts.append([list(d) for d in out.token_ids])
        return out


def generate(target: str, spec: dict, tp: int) -> dict:
    """PROMPTS (greedy and seeded sampling, preempted) at this TP size, every draft the proposer made recorded;
    then the LLM is deleted."""
    llm = LLM(model=target, tensor_parallel_size=tp, speculative_config=spec, **ENGINE)
    proposer = llm.engine.driver.proposer
    proposer.propose = recorder = Recorder(proposer.propose)
    outs = llm.generate(PROMPTS, PARAMS, use_tqdm=False)
    counters = llm.engine.counters
    result = {
        "tokens": [o.outputs[0].token_ids for o in outs], "logprobs": [o.outputs[0].logprobs for o in outs],
        "drafts": recorder.drafts, "num_drafts": counters.spec.num_draft_tokens,
        "accepted": counters.spec.num_accepted_tokens, "preemptions": counters.num_preemptions,
        "shapes": _draft_shapes(proposer),
    }
    del llm, outs, proposer, recorder, counters
    gc.collect()
    result["left"] = children()
    return result


def _draft_shapes(proposer) -> dict | None:
    """Rank 0's share of a draft model: its attention heads and its KV cache's KV heads."""
    model = getattr(proposer, "model", None)
    if model is None or not hasattr(model, "layers"):
        return None
    shard = getattr(model, "shard", model)
    return {"heads": shard.cfg.num_attention_heads, "kv_heads": proposer.kv[0][0].shape[2],
            "mlp": shard.cfg.intermediate_size, "model_kv_heads": model.cfg.num_key_value_heads}


@pytest.fixture(scope="module")
def runs(models):
    cache: dict = {}

    def get(method: str, tp: int, draft_tp: int = 1) -> dict:
        if (method, tp, draft_tp) not in cache:
            cache[method, tp, draft_tp] = generate(*spec_for(models, method, draft_tp), tp)
        return cache[method, tp, draft_tp]

    return get


@pytest.mark.parametrize("method", ["draft_model", "eagle3", "eagle", "mlp_speculator", "mtp"])
def test_proposer_on_rank0_beside_a_tp2_target_drafts_as_at_tp1(runs, method):
    want, got = runs(method, 1), runs(method, 2)
    assert got["num_drafts"] > 0 and got["preemptions"] > 0
    assert got["drafts"] == want["drafts"]  # hidden states and handles as at TP 1: the same drafts, step by step
    assert_same(got, want)
    assert (got["num_drafts"], got["accepted"]) == (want["num_drafts"], want["accepted"])
    if method == "draft_model":
        assert got["accepted"] > 0.2 * got["num_drafts"]  # (99 of 300 when written)
        assert got["shapes"] == want["shapes"] == {"heads": 4, "kv_heads": 2, "mlp": 128, "model_kv_heads": 2}
    assert got["left"] == []


def test_sharded_draft_model_drafts_as_at_tp1(runs):
    """draft_tensor_parallel_size=2: the draft split like the target (rank 0 holds 2 of its 4 heads, 1 of its 2 KV
    heads in its KV cache, half its MLP), its forwards run on both ranks; drafts and tokens as at TP 1."""
    want, got = runs("draft_model", 1), runs("draft_model", 2, 2)
    assert got["accepted"] > 0.2 * got["num_drafts"] > 0 and got["preemptions"] > 0
    assert got["drafts"] == want["drafts"]
    assert_same(got, want)
    assert got["shapes"] == {"heads": 2, "kv_heads": 1, "mlp": 64, "model_kv_heads": 2}
    assert got["left"] == []


def test_killed_worker_with_a_sharded_draft_raises_within_seconds(models):
    target, spec = spec_for(models, "draft_model", 2)
    assert_killed_worker_ends_the_engine(
        lambda: LLM(model=target, tensor_parallel_size=2, speculative_config=spec, **ENGINE),
        [{"prompt_token_ids": [5, 6, 7]}] * 6, 400)


# ---- bad settings fail before any process starts


def _config_only(folder: Path, **dims) -> str:
    """A draft folder with only a config.json (the checks read nothing else)."""
    folder.mkdir(parents=True)
    cfg = {"model_type": "llama", "vocab_size": TINY_VOCAB, "hidden_size": 96, "intermediate_size": 128,
           "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
           "rms_norm_eps": 1e-6, "rope_theta": 10000.0, **dims}
    (folder / "config.json").write_text(json.dumps(cfg))
    return str(folder)


@pytest.mark.parametrize("dims, message", [
    ({"num_attention_heads": 3, "num_key_value_heads": 1},
     r"speculative_config.draft_tensor_parallel_size=2 must divide the draft's num_attention_heads=3 "
     r"\(speculative_config.model='.*'\)"),
    ({"num_attention_heads": 6, "num_key_value_heads": 3},
     r"speculative_config.draft_tensor_parallel_size=2 and the draft's num_key_value_heads=3: one must divide the "
     r"other"),
    ({"intermediate_size": 129},
     r"speculative_config.draft_tensor_parallel_size=2 must divide the draft's intermediate_size=129"),
], ids=["heads", "kv_heads", "mlp"])
def test_draft_the_ranks_cannot_split_fails_before_any_process(models, tmp_path, dims, message):
    draft = _config_only(tmp_path / "draft", **dims)
    spec = {"method": "draft_model", "model": draft, "num_speculative_tokens": K, "draft_tensor_parallel_size": 2}
    with pytest.raises(ValueError, match=message):
        LLM(model=models["target"], tensor_parallel_size=2, speculative_config=spec, disable_log_stats=True)
    assert children() == []


@pytest.mark.parametrize("method", ["eagle3", "eagle", "mlp_speculator", "mtp"])
def test_sharded_head_is_refused_before_any_process(models, method):
    target, spec = spec_for(models, method, 2)
    with pytest.raises(ValueError, match=rf"speculative_config.draft_tensor_parallel_size=2: method '{method}' runs "
                                         rf"its head whole on the engine's process .*allowed: 1"):
        LLM(model=target, tensor_parallel_size=2, speculative_config=spec, disable_log_stats=True)
    assert children() == []


def test_kv_cache_needs_must_be_the_sharded_models():
    """A proposer whose KVCacheNeeds are not those of the model it loaded sharded fails, naming both."""
    from tokenleap.config import EngineConfig
    from tokenleap.model.arch import ModelArchConfig
    from tokenleap.speculative.model_loader import EngineModelLoader
    from tokenleap_plugins import KVCacheNeeds

    cfg = EngineConfig(model="x", tensor_parallel_size=2, speculative_config={"draft_tensor_parallel_size": 2})
    loader = EngineModelLoader(cfg, torch.device("cpu"), "torch")
    assert loader.local_kv_heads(KVCacheNeeds(1, 4, 16)) == 4  # nothing loaded sharded: the proposer's own
    loader.sharded = ModelArchConfig(model_type="llama", vocab_size=320, hidden_size=64, intermediate_size=128,
                                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                     rms_norm_eps=1e-6, rope_theta=1e4, max_position_embeddings=64,
                                     tie_word_embeddings=False, attention_bias=False)
    assert loader.local_kv_heads(KVCacheNeeds(2, 2, 16)) == 1
    with pytest.raises(ValueError, match=r"KVCacheNeeds \(layers, KV heads, head size\) = \(1, 2, 16\) are not those "
                                         r"of the model it loaded sharded \(2, 2, 16\)"):
        loader.local_kv_heads(KVCacheNeeds(1, 2, 16))


# (run in worker processes only: started with PYTHONPATH naming its folder, after this process started)
WORKER_CANNOT_READ_DRAFTS = """
import os
if os.environ.get("RANK") == "1":
    import tokenleap.distributed.shard_loader as shard_loader

    real = shard_loader.load_shard

    def load_shard(cfg, model_path, *args, **kwargs):
        if "draft" in str(model_path):
            raise OSError(f"cannot read {model_path} on this host")
        return real(cfg, model_path, *args, **kwargs)

    shard_loader.load_shard = load_shard
"""


@pytest.mark.parametrize("where", ["every rank", "worker"])
def test_a_draft_that_fails_to_load_fails_the_llm_and_leaves_no_process(models, tmp_path, monkeypatch, where):
    """A draft whose weights no rank can read (its config and tokenizer pass the checks), or that only the worker
    cannot read: every rank reports its status, so none is left waiting in the load's collective; rank 0 raises its
    own error, or one naming the worker; the workers stop with the engine."""
    import shutil

    draft = models["draft_model"]
    if where == "every rank":
        draft = tmp_path / "broken-draft"
        shutil.copytree(models["draft_model"], draft)
        (draft / "model.safetensors").write_bytes(b"not a safetensors file")
        message = r"building the proposer of method 'draft_model' failed: SafetensorError"
    else:
        (tmp_path / "sitecustomize.py").write_text(WORKER_CANNOT_READ_DRAFTS)
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
        message = (r"tensor-parallel worker rank 1 failed to load the proposer's model '.*near-draft':\n"
                   r"(.|\n)*OSError: cannot read .*near-draft on this host")
    spec = {"method": "draft_model", "model": str(draft), "num_speculative_tokens": K, "draft_tensor_parallel_size": 2}
    with pytest.raises((RuntimeError, TensorParallelWorkerError), match=message) as err:
        LLM(model=models["target"], tensor_parallel_size=2, speculative_config=spec, **ENGINE)
    del err
    gc.collect()
    assert children() == []
