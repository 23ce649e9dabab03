"""A proposer from another package: any package that implements the tokenleap_register_proposers hook and
declares an entry point in the group "tokenleap.proposers" is found by its method string.
tests/fixtures/proposer_pkg is one (method "lastseen"): `pip install ./tests/fixtures/proposer_pkg` installs it;
without installing, this script registers the same module with a ProposerManager by hand.

    python examples/third_party_proposer.py [--max-tokens 32]
"""

import argparse
import sys
from pathlib import Path

from tokenleap import LLM, SamplingParams
from tokenleap_plugins import ProposerManager

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--max-tokens", type=int, default=32)
parser.add_argument("--model", default="smollm2-135m-instruct")
args = parser.parse_args()

manager = ProposerManager()
if "lastseen" in [m.method for m in manager.installed_methods()]:
    print("method 'lastseen' is installed (entry point)")
else:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests/fixtures/proposer_pkg/src"))
    import tokenleap_lastseen

    manager.register(tokenleap_lastseen)
    print("method 'lastseen' registered by hand (pip install ./tests/fixtures/proposer_pkg to install it)")

config = {"method": "lastseen", "num_speculative_tokens": 3, "lastseen_window": 64}
llm = LLM(model=args.model, speculative_config=config, proposer_manager=manager)
plain = LLM(model=args.model)
params = SamplingParams(temperature=0, max_tokens=args.max_tokens)
prompt = "Repeat three times: red green blue."
spec_out = llm.generate([prompt], params, use_tqdm=False)[0]
plain_out = plain.generate([prompt], params, use_tqdm=False)[0]
print(repr(spec_out.outputs[0].text))
print(f"mean acceptance length: {spec_out.metrics.spec_decode.mean_acceptance_length:.2f}; "
      f"same tokens as without speculation: {spec_out.outputs[0].token_ids == plain_out.outputs[0].token_ids}")
