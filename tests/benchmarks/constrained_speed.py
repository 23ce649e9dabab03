"""JSON-schema-constrained decoding against unconstrained, plain and speculative, on SmolLM2-135M-Instruct,
batch 1, greedy, in one process (issue 19's speed target; meant for the GPU, runs on CPU with --device cpu):

    python tests/benchmarks/constrained_speed.py [--limit 16] [--max-tokens 160] [--out results.json]

Prompts ask the model to put a person's record, given in prose, into JSON (the record's strings are in the
prompt, which is where n-gram lookup finds its drafts). Each method runs every prompt alone, back to back,
twice: unconstrained and with ``structured_outputs={"json": SCHEMA}`` (nested objects, an enum, an array), one
clock over all prompts after a warm-up. Methods: plain, ngram (k = 5, lookup 2..4), eagle3 (the shipped head,
k = 4). Printed and written: tokens/s per (method, constraint), constrained / unconstrained per method (target
>= 0.9 for plain), each method's speedup over plain under both (target: constrained speedup >= unconstrained
speedup - 10%), outputs identical to plain's under the same constraint, and whether every constrained output
parses and validates against the schema.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch
from tokenleap import LLM, SamplingParams

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "address": {"type": "object",
                    "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
                    "required": ["city", "country"]},
        "role": {"type": "string", "enum": ["engineer", "doctor", "teacher", "artist", "other"]},
        "skills": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "age", "address", "role", "skills"],
}

PEOPLE = [
    ("Alice Moreau", 34, "Lyon", "France", "engineer", ["welding", "CAD drawing", "project planning"]),
    ("Kenji Watanabe", 51, "Osaka", "Japan", "doctor", ["cardiology", "teaching residents"]),
    ("Maria Gonzalez", 28, "Seville", "Spain", "teacher", ["mathematics", "chess coaching", "flamenco"]),
    ("Tomasz Kowalski", 45, "Krakow", "Poland", "artist", ["oil painting", "sculpture"]),
    ("Amara Okafor", 39, "Lagos", "Nigeria", "engineer", ["power systems", "solar installations"]),
    ("Lars Eriksson", 62, "Uppsala", "Sweden", "other", ["beekeeping", "carpentry", "sailing"]),
    ("Priya Raman", 31, "Chennai", "India", "doctor", ["paediatrics", "public health research"]),
    ("Jonas Becker", 24, "Leipzig", "Germany", "artist", ["photography", "video editing"]),
]


def prompts(limit: int) -> list[list[dict]]:
    out = []
    for i in range(limit):
        name, age, city, country, role, skills = PEOPLE[i % len(PEOPLE)]
        style = i // len(PEOPLE) % 2
        prose = (f"{name} is {age} years old and lives in {city}, {country}. By profession {name.split()[0]} is "
                 f"a{'n' if role[0] in 'aeiou' else ''} {role}; their skills are {', '.join(skills)}.")
        if style:
            prose = f"Record: name={name}; age={age}; city={city}; country={country}; role={role}; skills={skills}."
        out.append([{"role": "user", "content": "Write this person's record as a JSON object with the keys name, "
                     "age, address (city, country), role and skills. Reply with the JSON only.\n\n" + prose}])
    return out


def validates(text: str) -> bool:
    try:
        obj = json.loads(text)
    except ValueError:
        return False
    props = SCHEMA["properties"]
    return (isinstance(obj, dict) and set(SCHEMA["required"]) <= set(obj) and isinstance(obj["name"], str)
            and isinstance(obj["age"], int) and isinstance(obj["address"], dict)
            and {"city", "country"} <= set(obj["address"]) and obj["role"] in props["role"]["enum"]
            and isinstance(obj["skills"], list) and all(isinstance(s, str) for s in obj["skills"]))


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run(llm: LLM, chats, params: SamplingParams, device: str, profile=None) -> dict:
    """Every chat alone, after a warm-up, on one clock (under ``profile``, a cProfile.Profile, when given)."""
    for chat in chats[:2]:  # warm-up (graphs, grammar compilation)
        llm.chat([chat], params, use_tqdm=False)
    sync(device)
    counters = llm.engine.counters
    t0, steps0, drafted0 = time.perf_counter(), counters.num_steps, counters.spec.num_drafts
    if profile is not None:
        profile.enable()
    outs = [llm.chat([chat], params, use_tqdm=False)[0].outputs[0] for chat in chats]
    sync(device)
    if profile is not None:
        profile.disable()
    secs = time.perf_counter() - t0
    tokens, steps = sum(len(o.token_ids) for o in outs), counters.num_steps - steps0
    return {"tokens": tokens, "seconds": secs, "tokens_per_s": tokens / secs, "tokens_per_step": tokens / steps,
            "steps": steps, "verify_steps": counters.spec.num_drafts - drafted0, "us_per_step": 1e6 * secs / steps,
            "ids": [list(o.token_ids) for o in outs], "texts": [o.text for o in outs]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--eagle3", default="smollm2-135m-instruct-eagle3")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--limit", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=160)
    ap.add_argument("--methods", default="plain,ngram,eagle3")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    specs = {"plain": None,
             "ngram": {"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_min": 2, "prompt_lookup_max": 4},
             "eagle3": {"method": "eagle3", "model": a.eagle3, "num_speculative_tokens": 4}}
    chosen = a.methods.split(",")
    unknown = [m for m in chosen if m not in specs]
    if unknown or "plain" not in chosen:
        ap.error(f"--methods={a.methods!r}: plain and any of {sorted(specs)} are allowed, plain included")
    chats = prompts(a.limit)
    kinds = {"unconstrained": SamplingParams(temperature=0, max_tokens=a.max_tokens),
             "json": SamplingParams(temperature=0, max_tokens=a.max_tokens, structured_outputs={"json": SCHEMA})}
    res: dict = {"device": torch.cuda.get_device_name() if a.device == "cuda" else "cpu", "prompts": len(chats),
                 "max_tokens": a.max_tokens, "methods": {}}
    for method in chosen:
        llm = LLM(model=a.model, device=a.device, max_num_seqs=1, disable_log_stats=True,
                  speculative_config=specs[method])
        row = res["methods"][method] = {}
        for kind, params in kinds.items():
            got = run(llm, chats, params, a.device)
            row[kind] = got
            print(f"{method} {kind}: {got['tokens_per_s']:.1f} tokens/s ({got['tokens']} tokens, "
                  f"{got['tokens_per_step']:.2f} a step)", flush=True)
        row["json_over_unconstrained"] = row["json"]["tokens_per_s"] / row["unconstrained"]["tokens_per_s"]
        row["json_valid"] = sum(validates(t) for t in row["json"]["texts"])
        del llm
        gc.collect()
        if a.device == "cuda":
            torch.cuda.empty_cache()
    plain = res["methods"]["plain"]
    for method, row in res["methods"].items():
        line = f"{method}: json / unconstrained {row['json_over_unconstrained']:.3f}, json valid {row['json_valid']}" \
               f"/{len(chats)}"
        if method != "plain":
            for kind in kinds:
                row[kind]["speedup"] = row[kind]["tokens_per_s"] / plain[kind]["tokens_per_s"]
                row[kind]["identical"] = row[kind]["ids"] == plain[kind]["ids"]
            line += (f"; speedup over plain: unconstrained {row['unconstrained']['speedup']:.3f}x, json "
                     f"{row['json']['speedup']:.3f}x; identical to plain: unconstrained "
                     f"{row['unconstrained']['identical']}, json {row['json']['identical']}")
        print(line, flush=True)
    for row in res["methods"].values():
        for kind in kinds:
            row[kind].pop("ids")
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
