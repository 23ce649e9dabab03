"""The conformance kit catches each kind of broken proposer; the manager's registration and errors."""

import random
import sys
import types

import pluggy
import pytest
from tokenleap_ngram.prompt_lookup import prompt_lookup
from tokenleap_plugins import (
    Drafts,
    ProposerBase,
    ProposerManager,
    ProposerNeeds,
    ProposerSpec,
    UnknownMethodError,
    hookimpl,
)
from tokenleap_plugins.testing import (
    EchoProposer,
    check_bounds,
    check_determinism,
    check_device_drafter,
    check_lifecycle,
    check_memory_flat,
    echo_spec,
    run_conformance,
)


class Remembering(ProposerBase):
    """Correct and stateful: drafts the first tokens of the request's own history."""

    def __init__(self, config=None, context=None):
        self.k = context.num_speculative_tokens
        self.seen = {}

    def on_request_added(self, request_id, prompt_token_ids):
        self.seen.setdefault(request_id, []).extend(prompt_token_ids)

    def on_verified(self, results):
        for r in results:
            self.seen[r.request_id].extend(r.new_token_ids)

    def on_request_finished(self, request_id, token_ids):
        del self.seen[request_id]

    def on_request_aborted(self, request_id):
        del self.seen[request_id]

    def propose(self, batch):
        return Drafts([self.seen[r.request_id][: min(r.max_num_drafts, self.k)] for r in batch.requests])


class TooMany(EchoProposer):
    def propose(self, batch):
        return Drafts([[0] * (r.max_num_drafts + 1) for r in batch.requests])


class OutOfVocab(EchoProposer):
    def propose(self, batch):
        return Drafts([[64] * min(1, r.max_num_drafts) for r in batch.requests])


class Random(EchoProposer):
    """Unseeded: differs between two builds."""

    rng = random.Random()

    def propose(self, batch):
        return Drafts([[self.rng.randrange(64) for _ in range(r.max_num_drafts)] for r in batch.requests])


class Leaky(Remembering):
    def on_request_finished(self, request_id, token_ids):
        pass

    def on_request_aborted(self, request_id):
        pass


class KeepsAborted(Remembering):
    def on_request_aborted(self, request_id):
        pass  # the next request with this id inherits the aborted tokens


class Silent(EchoProposer):
    def propose(self, batch):
        return Drafts([[] for _ in batch.requests])


class BadProbs(EchoProposer):
    def propose(self, batch):
        drafts = super().propose(batch)
        probs = [[[0.5] * 64 for _ in ids] for ids in drafts.token_ids]
        return Drafts(drafts.token_ids, probs)


class OneHotProbs(EchoProposer):
    def propose(self, batch):
        torch = pytest.importorskip("torch")
        drafts = super().propose(batch)
        probs = [torch.nn.functional.one_hot(torch.tensor(ids, dtype=torch.long), 64).float() if ids else None
                 for ids in drafts.token_ids]
        return Drafts(drafts.token_ids, probs)


def spec(cls, method="fake"):
    return ProposerSpec(method=method, build=cls)


@pytest.mark.parametrize("cls", [EchoProposer, Remembering, OneHotProbs])
def test_correct_proposers_pass(cls):
    run_conformance(spec(cls), num_memory_requests=300 if cls is OneHotProbs else 2000)


def test_echo_spec_passes_with_defaults():
    run_conformance(echo_spec())


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (TooMany, r"fake: step 1: request 'req-\d+': \d drafts .* but max_num_drafts=\d"),
        (OutOfVocab, r"draft token 64 is not an int in \[0, 64\)"),
        (BadProbs, r"probs row 0 has min 0.5 and sum 32.000000; rows must be non-negative and sum to 1"),
    ],
)
def test_bounds_failures(cls, message):
    with pytest.raises(AssertionError, match=message):
        check_bounds(spec(cls))


class LooksUpPrompt(ProposerBase):
    """Drafts by prompt lookup on the host and offers the n-gram package's device drafter, which drafts the same."""

    def __init__(self, config=None, context=None):
        pass

    def propose(self, batch):
        return Drafts([prompt_lookup(r.token_ids, r.max_num_drafts, 1, 3) for r in batch.requests])

    def device_drafter(self, spec):
        from tokenleap_ngram.device.drafter import PromptLookupDrafter

        return PromptLookupDrafter(spec, 1, 3)


class ClaimsPromptLookup(EchoProposer):
    """Offers the prompt-lookup device drafter but echoes the last tokens on the host: an engine drafting on the
    device would give other drafts than one drafting on the host."""

    device_drafter = LooksUpPrompt.device_drafter


def test_a_device_drafter_is_held_to_the_host_drafts():
    assert check_device_drafter(spec(LooksUpPrompt))
    run_conformance(spec(LooksUpPrompt), num_memory_requests=500, report=None)
    with pytest.raises(AssertionError, match=r"fake: device drafter, case \d+, row \d+ \(\d+ tokens\): drafted "
                                             r"\[.*\] on the device, propose\(\) drafted \[.*\]"):
        check_device_drafter(spec(ClaimsPromptLookup))
    assert not check_device_drafter(spec(EchoProposer))  # none offered


def test_run_conformance_reports_each_check_and_the_default_k(capsys):
    deep = ProposerSpec(method="fake", build=EchoProposer, default_num_speculative_tokens=lambda cfg: 7)
    run_conformance(deep, num_memory_requests=300)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "fake: entry point not installed (not checked)"
    assert "fake: default num_speculative_tokens ok" in lines and lines[-1] == "fake: conformance passed"
    broken = ProposerSpec(method="fake", build=EchoProposer, default_num_speculative_tokens=lambda cfg: 0)
    with pytest.raises(AssertionError, match=r"fake: default_num_speculative_tokens gave 0, outside 1..32"):
        run_conformance(broken, num_memory_requests=300, report=None)


def test_a_proposer_that_never_drafts_is_suspicious():
    with pytest.raises(AssertionError, match=r"no drafts at all in \d+ propose calls .* expect_drafts=False"):
        check_bounds(spec(Silent))
    run_conformance(spec(Silent), expect_drafts=False, num_memory_requests=500)


def test_nondeterminism_fails():
    with pytest.raises(AssertionError, match=r"fake: not deterministic: step 1, request life life-\d+: drafts"):
        check_determinism(spec(Random))


def test_state_left_after_abort_fails():
    check_lifecycle(spec(Remembering))
    with pytest.raises(AssertionError, match=r"an aborted request left a trace: step \d+, request life life-\d+"):
        check_lifecycle(spec(KeepsAborted))


def test_memory_leak_fails():
    with pytest.raises(AssertionError, match=r"memory grows with finished/aborted requests: traced \d+ B after 300 "
                                             r"requests, \d+ B after 3000 \(\+\d+ B > limit 1048576 B"):
        check_memory_flat(spec(Leaky), num_requests=3000)


# -- manager behaviour ----------------------------------------------------------------------------------
@pytest.fixture
def fake_plugin():
    module = types.ModuleType("tokenleap_fake_plugin")
    module.tokenleap_register_proposers = hookimpl(lambda: [echo_spec("fake_echo")])
    sys.modules[module.__name__] = module
    yield module
    del sys.modules[module.__name__]


def test_registered_plugin_loads_by_method(fake_plugin):
    manager = ProposerManager(env={})
    manager.register(fake_plugin)
    assert manager.load("fake_echo").build is EchoProposer
    assert ("fake_echo", "<registered>") in [(m.method, m.package) for m in manager.installed_methods()]
    manager.unregister(fake_plugin)
    with pytest.raises(UnknownMethodError):
        manager.load("fake_echo")


def test_check_pending_catches_misspelled_hook():
    module = types.ModuleType("tokenleap_typo_plugin")
    module.tokenleap_register_proposer = hookimpl(lambda: [echo_spec()])  # missing "s"
    with pytest.raises(pluggy.PluginValidationError, match="tokenleap_register_proposer"):
        ProposerManager(env={}).register(module)


class NoEagle(ProposerManager):
    """As if tokenleap-eagle were not installed, whatever this environment holds."""

    def _entry_points(self):
        return [ep for ep in super()._entry_points() if ep.name not in ("eagle", "eagle3")]


def test_unknown_method_lists_installed_and_names_the_package(fake_plugin):
    manager = NoEagle(env={})
    manager.register(fake_plugin)
    with pytest.raises(UnknownMethodError) as info:
        manager.load("eagle")
    message = str(info.value)
    assert "speculative_config.method='eagle' is not an installed speculative method" in message
    assert "'fake_echo'" in message and "'ngram'" in message  # registered and entry-point methods
    assert message.endswith("It is provided by the folder proposers-eagle/ of the tokenleap repository: from a clone, "
                            "pip install ./proposers-eagle")
    with pytest.raises(UnknownMethodError, match=r"Methods of the tokenleap repository: \['draft_model', 'eagle'"):
        manager.load("medusa")


class ReadsHiddenStates(EchoProposer):
    needs = ProposerNeeds(hidden_state_layers=(-1,))

    def propose(self, batch):
        states = batch.hidden_states[-1]
        for r in batch.requests:
            start, stop = r.hidden_state_rows
            assert 0 <= start < stop <= states.shape[0] and states.shape[1] == 32
        return super().propose(batch)


def test_hidden_states_are_given_to_proposers_that_ask():
    pytest.importorskip("torch")
    run_conformance(spec(ReadsHiddenStates), num_memory_requests=200)
