"""CPU comparison of the two grammar engines tokenleap could use (xgrammar, llguidance) on SmolLM2's tokenizer:
time to build the tokenizer info, to compile a JSON schema, and per-token time to fill the next-token bitmask
and advance the matcher along a valid JSON text. The numbers behind the choice in docs/sampling.md.

    .venv/bin/python tests/benchmarks/bench_grammar_engines.py
"""

from __future__ import annotations

import json
import statistics
import time

import torch

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "role": {"enum": ["admin", "user", "guest"]},
        "address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
                    "required": ["city", "zip"]},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "age", "role", "address", "tags"],
}
TEXT = json.dumps({"name": "Ada Lovelace", "age": 36, "role": "admin",
                   "address": {"city": "London", "zip": "W1"}, "tags": ["math", "engines", "notes"]})


def tokenizer():
    import gguf
    from tokenleap.model.gguf_loader import gguf_tokenizer
    from tokenleap.model.hub import resolve_model

    path = resolve_model("smollm2-135m-instruct", progress=False)
    return gguf_tokenizer(path, gguf.GGUFReader(path))


def bench_xgrammar(tok, ids, vocab):
    import xgrammar as xgr

    t0 = time.perf_counter()
    info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=vocab)
    t1 = time.perf_counter()
    compiler = xgr.GrammarCompiler(info, cache_enabled=False)
    compiled = compiler.compile_json_schema(json.dumps(SCHEMA))
    t2 = time.perf_counter()
    matcher = xgr.GrammarMatcher(compiled)
    mask = xgr.allocate_token_bitmask(1, vocab)
    per = []
    for t in ids:
        s = time.perf_counter()
        matcher.fill_next_token_bitmask(mask)
        assert matcher.accept_token(t), t
        per.append(time.perf_counter() - s)
    return t1 - t0, t2 - t1, per


def bench_llguidance(tok, ids, vocab):
    import llguidance
    import llguidance.hf
    import llguidance.torch as lt

    t0 = time.perf_counter()
    # The GGUF tokenizer's decoder is a Sequence ending in ByteLevel, which llguidance does not read as
    # byte-level (it then rejects tokens such as 'Ġ"'); give it the plain ByteLevel decoder.
    spec = json.loads(tok.backend_tokenizer.to_str())
    spec["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    info = llguidance.LLTokenizer(json.dumps(spec), n_vocab=vocab, eos_token=tok.eos_token_id)
    t1 = time.perf_counter()
    grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(SCHEMA))
    matcher = llguidance.LLMatcher(info, grammar)
    assert not matcher.is_error(), matcher.get_error()
    t2 = time.perf_counter()
    mask = lt.allocate_token_bitmask(1, vocab)
    per = []
    for t in ids:
        s = time.perf_counter()
        lt.fill_next_token_bitmask(matcher, mask, 0)
        assert matcher.consume_token(t), (t, matcher.get_error())
        per.append(time.perf_counter() - s)
    return t1 - t0, t2 - t1, per


def main() -> None:
    torch.set_num_threads(1)
    tok = tokenizer()
    ids = tok.encode(TEXT, add_special_tokens=False)
    vocab = len(tok)
    print(f"tokenizer vocab {vocab}, {len(ids)} tokens of JSON")
    for name, fn in (("xgrammar", bench_xgrammar), ("llguidance", bench_llguidance)):
        fn(tok, ids, vocab)  # warm up (imports, first-call work)
        runs = [fn(tok, ids, vocab) for _ in range(3)]
        info = min(r[0] for r in runs)
        comp = min(r[1] for r in runs)
        per = [statistics.median(r[2]) for r in runs]
        p99 = [sorted(r[2])[int(0.99 * (len(r[2]) - 1))] for r in runs]
        print(f"{name:11s} tokenizer info {info * 1e3:8.1f} ms   schema compile {comp * 1e3:7.2f} ms   "
              f"mask+advance per token median {min(per) * 1e6:7.1f} us   p99 {min(p99) * 1e6:7.1f} us")


if __name__ == "__main__":
    main()
