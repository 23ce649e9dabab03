"""Method mlp_speculator / mlp: the speculator's maths against a plain reference, its loader (tied, prefixed,
broken checkpoints), drafts through the proposer contract, bad configurations, and losslessness end to end."""

from __future__ import annotations

import math

import pytest
import torch
from helpers.tiny_heads import make_tiny_speculator
from tokenleap_eagle.mlp_speculator.loader import load_speculator
from tokenleap_plugins import (
    ComputedTokens,
    ProposeBatch,
    ProposerContext,
    ProposeRequest,
    SamplingInfo,
    SpeculativeSettings,
    TargetHandles,
)
from tokenleap_plugins.manager import ProposerManager


def reference_drafts(t: dict[str, torch.Tensor], cfg: dict, hidden: torch.Tensor, token: int, k: int) -> list[int]:
    """fms-extras' published formula, one request, written out: state = GELU(LN(sw * proj(state) + ew * emb(tok)))."""
    n, inner = cfg["n_predict"], cfg["inner_dim"] or cfg["emb_dim"]
    sw = 0.5 ** (0.5 / n)
    ew = math.sqrt((1 - sw**2) * (inner / 2))
    state = hidden.double()
    if cfg["scale_input"]:
        state = state / torch.sqrt(state.pow(2).mean() + 1e-6) / math.sqrt(2)
    out = []
    for i in range(k):
        s = 0 if cfg["tie_weights"] else i
        p = (0 if i == 0 else 1) if cfg["tie_weights"] else i
        x = sw * (t[f"proj.{p}.weight"].double() @ state) + ew * t[f"emb.{s}.weight"][token].double()
        x = x / torch.sqrt(x.pow(2).mean() + 1e-6) * t[f"ln.{s}.weight"].double() + t[f"ln.{s}.bias"].double()
        state = torch.nn.functional.gelu(x)
        token = int((t[f"head.{s}.weight"].double() @ state).argmax())
        out.append(token)
    return out


def _ctx(model: str, k: int, hidden: int = 64, vocab: int = 320) -> ProposerContext:
    handles = TargetHandles(embed=None, compute_logits=None, final_norm=lambda h: h, embedding_weight=None,
                            lm_head_weight=None)
    return ProposerContext(num_speculative_tokens=k, vocab_size=vocab, max_model_len=512, seed=0, hidden_size=hidden,
                           speculative=SpeculativeSettings(model=model), target=handles)


def _build(method: str, model: str, k: int, **kw):
    spec = ProposerManager(env={}).load(method)
    return spec.build(None, _ctx(model, k, **kw))


@pytest.mark.parametrize("variant", [
    dict(), dict(tie_weights=True), dict(scale_input=True), dict(inner_dim=32), dict(prefix="speculator."),
    dict(tie_weights=True, write_duplicates=True, n_predict=4),
])
def test_drafts_equal_the_published_formula(tmp_path, variant):
    import json

    from safetensors.torch import load_file

    folder = make_tiny_speculator(tmp_path / "spec", **variant)
    tensors = {k.removeprefix("speculator."): v for k, v in load_file(str(folder / "model.safetensors")).items()}
    cfg = json.loads((folder / "config.json").read_text())
    n = cfg["n_predict"]
    proposer = _build("mlp_speculator", str(folder), n)
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(7, 64, generator=g)  # rows of the step: request a owns 0..2, request b 3..6
    a = ProposeRequest("a", token_ids=[5, 6, 7, 8], num_prompt_tokens=3, max_num_drafts=n,
                       computed=ComputedTokens(start=1, count=2, hidden_rows=0, num_rejected=1))
    b = ProposeRequest("b", token_ids=[9, 10, 11, 12, 13, 14, 15], num_prompt_tokens=2, max_num_drafts=n - 1,
                       computed=ComputedTokens(start=2, count=4, hidden_rows=3))
    mid = ProposeRequest("c", token_ids=[1, 2, 3], num_prompt_tokens=3, max_num_drafts=0,
                         computed=ComputedTokens(start=0, count=2, hidden_rows=0))
    drafts = proposer.propose(ProposeBatch([a, mid, b], {-1: hidden}))
    assert drafts.probs is None
    assert list(drafts.token_ids[0]) == reference_drafts(tensors, cfg, hidden[1], 8, n)
    assert list(drafts.token_ids[1]) == []
    assert list(drafts.token_ids[2]) == reference_drafts(tensors, cfg, hidden[6], 15, n - 1)


def test_sampled_drafts_come_with_their_distribution(tmp_path):
    folder = make_tiny_speculator(tmp_path / "spec")
    proposer = _build("mlp", str(folder), 3)
    hidden = torch.randn(2, 64, generator=torch.Generator().manual_seed(2))
    reqs = [ProposeRequest(f"r{i}", token_ids=[4, 5, 6], num_prompt_tokens=2, max_num_drafts=3,
                           computed=ComputedTokens(start=1, count=1, hidden_rows=i),
                           sampling=SamplingInfo(temperature=t, top_k=k, seed=7))
            for i, (t, k) in enumerate([(0.0, 0), (0.8, 20)])]
    drafts = proposer.propose(ProposeBatch(reqs, {-1: hidden}))
    assert drafts.probs[0] is None
    probs = drafts.probs[1]
    assert probs.shape == (3, 320)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3))
    assert ((probs > 0).sum(-1) <= 20).all()  # top-k 20 applied
    for j, tok in enumerate(drafts.token_ids[1]):
        assert probs[j, tok] > 0  # each draft was drawn from its row
    again = proposer.propose(ProposeBatch(reqs, {-1: hidden}))  # counter-based noise: same seed, same drafts
    assert list(again.token_ids[1]) == list(drafts.token_ids[1])


def test_loader_rejects_broken_checkpoints(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = make_tiny_speculator(tmp_path / "spec")
    t = load_file(str(folder / "model.safetensors"))
    del t["ln.1.bias"]
    save_file(t, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=r"lacks 1 tensor\(s\).*ln\.1\.bias"):
        load_speculator(folder, torch.float32, "cpu")
    folder = make_tiny_speculator(tmp_path / "spec2")
    t = load_file(str(folder / "model.safetensors"))
    t["proj.1.weight"] = torch.zeros(64, 32)
    save_file(t, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=r"proj\.1\.weight has shape \(64, 32\), config.json implies \(64, 64\)"):
        load_speculator(folder, torch.float32, "cpu")


def test_bad_configurations_fail_before_generation(tmp_path):
    folder = str(make_tiny_speculator(tmp_path / "spec", n_predict=3))
    with pytest.raises(ValueError, match=r"num_speculative_tokens=4.*n_predict=3.*<= 3"):
        _build("mlp_speculator", folder, 4)
    with pytest.raises(ValueError, match=r"emb_dim=64.*hidden size is 96"):
        _build("mlp_speculator", folder, 2, hidden=96)
    with pytest.raises(ValueError, match=r"vocab_size=320.*1000 entries"):
        _build("mlp_speculator", folder, 2, vocab=1000)
    with pytest.raises(FileNotFoundError, match=r"smollm2-135m-instruct-mlp"):
        _build("mlp_speculator", str(tmp_path / "nope"), 2)


def test_bad_configurations_fail_in_the_engine_before_loading(tiny_checkpoint, tmp_path):
    from tokenleap import LLM

    target = str(tiny_checkpoint("llama"))
    for kw, match in [
        (dict(n_predict=2), r"num_speculative_tokens=3.*n_predict=2"),
        (dict(emb_dim=96), r"emb_dim=96.*hidden size is 64"),
        (dict(vocab_size=500), r"vocab_size=500.*320 entries"),
    ]:
        folder = make_tiny_speculator(tmp_path / str(len(match)), **kw)
        with pytest.raises(ValueError, match=match):
            LLM(target, speculative_config={"method": "mlp", "model": str(folder), "num_speculative_tokens": 3}, **KW)


# -- end to end: a speculator trained here on the tiny target's own greedy outputs ---------------------------------

KW = dict(max_model_len=256, disable_log_stats=True, kv_cache_memory_bytes=8 << 20)


def _prompts(seed: int, n: int) -> list[dict]:
    import random

    rng = random.Random(seed)
    return [{"prompt_token_ids": [rng.randrange(3, 300) for _ in range(rng.randint(4, 30))]} for _ in range(n)]


def bigram_checkpoint(folder, out):
    """A copy of a tiny checkpoint with every o_proj zeroed (see helpers.spec_counts.without_attention_output)."""
    import shutil

    from safetensors.torch import load_file, save_file

    out = out / "bigram"
    shutil.copytree(folder, out)
    f = out / "model.safetensors"
    t = load_file(str(f))
    save_file({k: (v.zero_() if "o_proj" in k else v) for k, v in t.items()}, str(f), metadata={"format": "pt"})
    return out


@pytest.fixture(scope="module")
def trained(tiny_checkpoint, tmp_path_factory):
    """(target folder, speculator folder, plain LLM): an MLP speculator (n_predict 3) trained for ~10 s on the
    target's greedy continuations of 48 random prompts (disjoint from the test prompts' seed). The target is a
    tiny random Llama whose attention outputs are zeroed (``bigram_checkpoint``): its next token depends on the
    current one only, a map a small speculator learns from this little data, so drafts get accepted."""
    from tokenleap import LLM, SamplingParams
    from tokenleap_eagle.mlp_speculator.loader import save_speculator
    from tokenleap_eagle.mlp_speculator.model import MLPSpeculatorConfig
    from tokenleap_eagle.train.mlp_data import load_target, rows_from_sequences
    from tokenleap_eagle.train.mlp_speculator import train_mlp_speculator

    torch.set_num_threads(1)
    target = str(bigram_checkpoint(tiny_checkpoint("llama"), tmp_path_factory.mktemp("bigram")))
    plain = LLM(target, **KW)
    outs = plain.generate(_prompts(100, 48), SamplingParams(temperature=0, max_tokens=48, ignore_eos=True),
                          use_tqdm=False)
    seqs = [list(o.prompt_token_ids) + list(o.outputs[0].token_ids) for o in outs]
    model, head, _ = load_target(target)
    hidden, tokens = rows_from_sequences(model, head, seqs, n_predict=3)
    cfg = MLPSpeculatorConfig(emb_dim=64, inner_dim=64, vocab_size=320, n_predict=3)
    spec = train_mlp_speculator(hidden, tokens, cfg, embedding=model.get_input_embeddings().weight.detach(),
                                steps=150, batch_rows=256, lr=1e-2, log_every=0)
    folder = tmp_path_factory.mktemp("mlp") / "tiny-mlp"
    save_speculator(spec, folder, dtype=torch.float32)
    return target, str(folder), plain


@pytest.mark.parametrize("method,ks", [("mlp_speculator", (1, 2, 3)), ("mlp", (3,))])
def test_greedy_equals_plain_decoding(trained, method, ks):
    """20 prompts, batch 8 and batch 1, k = 1..n_predict: the same tokens as plain decoding, and the trained
    speculator's drafts are accepted often (the check that the state it reads is the right row)."""
    from tokenleap import LLM, SamplingParams

    target, folder, plain = trained
    prompts = _prompts(7, 20)
    params = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)
    want = [list(o.outputs[0].token_ids) for o in plain.generate(prompts, params, use_tqdm=False)]
    for k in ks:
        llm = LLM(target, speculative_config={"method": method, "model": folder, "num_speculative_tokens": k},
                  max_num_seqs=8, **KW)
        got = [list(o.outputs[0].token_ids) for o in llm.generate(prompts, params, use_tqdm=False)]
        assert got == want, f"k={k}"
        one = [list(llm.generate([p], params, use_tqdm=False)[0].outputs[0].token_ids) for p in prompts[:5]]
        assert one == want[:5], f"k={k}, batch 1"
        s = llm.engine.counters.spec
        mean_len = 1 + s.num_accepted_tokens / s.num_drafts
        assert mean_len > 1 + 0.3 * k, f"k={k}: mean acceptance length {mean_len:.2f}"


def _exact_marginals(target: str, prompt: list[int], steps: int, temperature: float, top_k: int) -> list[torch.Tensor]:
    """The target's exact token marginal at output positions 0..steps-1 under temperature + top-k sampling,
    by enumerating every top-k path (transformers forward, float64 probabilities)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32).eval()
    paths, weights, out = [list(prompt)], torch.ones(1, dtype=torch.float64), []
    with torch.no_grad():
        for _ in range(steps):
            logits = model(input_ids=torch.tensor(paths)).logits[:, -1].double() / temperature  # [paths, vocab]
            top = logits.topk(top_k, dim=-1)
            probs = torch.zeros_like(logits).scatter_(1, top.indices, top.values.softmax(-1))
            joint = weights[:, None] * probs  # [paths, vocab]
            out.append(joint.sum(0))
            nz = joint.nonzero().tolist()
            paths = [paths[i] + [t] for i, t in nz]
            weights = torch.tensor([joint[i, t].item() for i, t in nz], dtype=torch.float64)
    return out


@pytest.mark.parametrize("verification", ["rejection", "coupled"])
def test_sampling_keeps_the_target_distribution(trained, verification):
    """Temperature 1, top-k 8, 2000 seeded requests of 4 tokens with k = 3 (drafts sampled from the speculator
    and verified at output positions 1-3 by rejection sampling, or by coupling with drafts drawn from the
    target's noise): the token marginal at each of positions 0-3 is
    compared with the target's exact one by a chi-square test (cells with expected count < 5 pooled), each at
    p = 0.001 / 4 (Bonferroni over the 4 positions: family-wise false alarm rate 0.001)."""
    from tokenleap import LLM, SamplingParams

    target, folder, _ = trained
    prompt, n = [11, 42, 7, 99, 5], 2000
    exact = _exact_marginals(target, prompt, 4, 1.0, 8)
    llm = LLM(target, speculative_config={"method": "mlp_speculator", "model": folder, "num_speculative_tokens": 3,
                                          "draft_verification": verification}, max_num_seqs=256, **KW)
    outs = llm.generate([{"prompt_token_ids": prompt}] * n,
                        [SamplingParams(temperature=1.0, top_k=8, max_tokens=4, seed=i, ignore_eos=True)
                         for i in range(n)], use_tqdm=False)
    s = llm.engine.counters.spec
    assert s.num_accepted_tokens > 300  # drafts are exercised: accepted ~10% of the time here, rejected the rest
    samples = torch.tensor([list(o.outputs[0].token_ids) for o in outs])  # [n, 4]
    for pos in range(4):
        counts = torch.bincount(samples[:, pos], minlength=320).double()
        expected = exact[pos] * n
        big = expected >= 5
        obs, exp = counts[big], expected[big]
        rest_obs, rest_exp = counts[~big].sum(), expected[~big].sum()
        if rest_exp < 1e-9:  # tokens outside every top-k path: never drawn
            assert rest_obs == 0, f"position {pos}: {rest_obs} samples outside the top-k support"
        else:
            obs, exp = torch.cat([obs, rest_obs[None]]), torch.cat([exp, rest_exp[None]])
        assert obs.sum() == n and abs(exp.sum() - n) < 1e-6
        p = chi_square_p_value(obs, exp)
        assert p > 0.001 / 4, f"position {pos}: chi-square p = {p:.2e}"


def chi_square_p_value(observed: torch.Tensor, expected: torch.Tensor) -> float:
    """Pearson's goodness-of-fit test: P(chi-square(cells - 1) >= statistic), the regularized upper incomplete
    gamma Q(dof / 2, statistic / 2) (what scipy.stats.chisquare gives, without scipy)."""
    stat = float(((observed - expected) ** 2 / expected).sum())
    dof = observed.numel() - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64)))


def test_chi_square_p_value_matches_the_textbook_values():
    """Critical values of chi-square(3): 7.815 at p = 0.05, 16.266 at p = 0.001; a perfect fit has p = 1."""
    exp = torch.full((4,), 25.0, dtype=torch.float64)
    assert chi_square_p_value(exp.clone(), exp) == pytest.approx(1.0)
    for stat, p in ((7.815, 0.05), (16.266, 0.001)):
        d = (stat * 25.0 / 2) ** 0.5  # two cells off by +-d give the statistic 2 d^2 / 25
        obs = exp + torch.tensor([d, -d, 0.0, 0.0], dtype=torch.float64)
        assert chi_square_p_value(obs, exp) == pytest.approx(p, rel=2e-3)


def test_trainer_command_writes_a_loadable_speculator(tiny_checkpoint, tmp_path):
    """``tokenleap-eagle train --head mlp_speculator`` (rows from a data cache; 5 steps) writes a checkpoint that
    loads with the target's shapes."""
    from tokenleap_eagle.cli import main
    from tokenleap_eagle.train.mlp_data import load_target, rows_from_sequences

    target = str(tiny_checkpoint("llama"))
    model, head, _ = load_target(target)
    seqs = []
    with torch.no_grad():
        for start in (5, 77):  # the target's own greedy continuations: every position is labelled
            ids = [start]
            for _ in range(30):
                ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
            seqs.append(ids)
    hidden, tokens = rows_from_sequences(model, head, seqs, n_predict=2)
    assert len(tokens) >= 50
    torch.save({"hidden": hidden, "tokens": tokens, "embedding": model.get_input_embeddings().weight.detach()},
               tmp_path / "rows.pt")
    out = tmp_path / "spec"
    rc = main(["train", "--head", "mlp_speculator", "--target", target, "--out", str(out), "--data-cache",
               str(tmp_path / "rows.pt"), "--n-predict", "2", "--inner-dim", "32", "--steps", "5",
               "--batch-rows", "16"])
    assert rc == 0
    spec = load_speculator(out, torch.float32, "cpu")
    assert (spec.cfg.emb_dim, spec.cfg.inner_dim, spec.cfg.vocab_size, spec.cfg.n_predict) == (64, 32, 320, 2)


@pytest.mark.parametrize("max_num_seqs", [1, 8])
def test_device_drafting_equals_host_drafting(trained, max_num_seqs):
    """The speculator's device drafter (drafting inside the verify graph from the previous step's tokens and hidden
    states; here the graphed path run eagerly on the CPU): the tokens of plain decoding, the same drafts and
    acceptance per position as drafting on the host in the same path, most verify steps launched behind the step
    before them (no host sync between them). Drafts near each request's max_tokens are cut as the host cuts them
    (the lengths vary)."""
    from helpers.padded_path import assert_device_drafting_equals_host, use_padded_path
    from helpers.spec_counts import spec_totals
    from tokenleap import LLM, SamplingParams
    from tokenleap_eagle.mlp_speculator.device import MLPDeviceDrafter

    target, folder, plain = trained
    prompts = _prompts(11, 12)
    params = [SamplingParams(temperature=0, max_tokens=m, ignore_eos=True) for m in (9, 20, 31, 14) * 3]
    spec = {"method": "mlp_speculator", "model": folder, "num_speculative_tokens": 3}

    def make_llm(device_drafting: bool) -> LLM:
        llm = LLM(target, speculative_config=spec, max_num_seqs=max_num_seqs, block_size=16, **KW)
        return use_padded_path(llm, 16, device_drafting=device_drafting)

    got, llm = assert_device_drafting_equals_host(make_llm, prompts, params, MLPDeviceDrafter)
    assert got == [list(o.outputs[0].token_ids) for o in plain.generate(prompts, params, use_tqdm=False)]
    drafted, accepted, _ = spec_totals(llm)
    assert accepted > 0.3 * drafted
