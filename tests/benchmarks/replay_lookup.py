"""Offline replay of prompt lookup on the model's own greedy answers: what other drafting would buy, no GPU.

    python tests/benchmarks/replay_lookup.py [--answers FILE.json] [--model PATH_OR_ALIAS] [--verify-cost 1.13]

(The CPU model's float32 answers differ a little from the H100's bf16 ones: code editing replays at 2.16 tokens
per step here, 2.14 on the GPU.)

The answers (prompt and answer token ids of the code-editing, summarization and module-editing chats, greedy,
stopping at EOS, at most 512 tokens) are made once with the CPU model and kept in ``--answers``. Replaying a
drafting rule over an answer gives its tokens per step exactly as the engine would (a step emits the accepted
drafts and one more token). Printed per prompt set:

- tokens per step of prompt lookup (1..4) with k = 3 .. 31 drafts;
- a verify step costing ``--verify-cost`` decode steps, the modeled speedup over plain decoding (first tokens
  left out) when every step verifies (what the engine does), when a step that would find no draft runs as a
  decode step instead, either guessed by the host from the tokens it has (it launches step N + 1 before reading
  step N back) or known (an oracle);
- tokens per step when a step verifies several branches (the distinct continuations of the matched n-gram, most
  recent first), width x depth drafts in all.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from tokenleap_plugins.prompt_lookup import prompt_lookup

LO, HI = 1, 4  # the lookup the GPU figures use

Answer = tuple[list[int], list[int]]  # (prompt token ids, answer token ids)


def make_answers(model: str) -> dict[str, list[Answer]]:
    from tokenleap import LLM, SamplingParams
    from tokenleap.bench.prompts import code_editing_prompts, module_editing_prompts, summarization_prompts

    llm = LLM(model=model, max_num_seqs=10, disable_log_stats=True)
    sets = {"code-editing": code_editing_prompts(), "summarization": summarization_prompts(),
            "module-editing": module_editing_prompts()}
    out = {}
    for name, prompts in sets.items():
        outs = llm.chat([[{"role": "user", "content": p}] for p in prompts],
                        SamplingParams(temperature=0, max_tokens=512), use_tqdm=True)
        out[name] = [(list(o.prompt_token_ids), list(o.outputs[0].token_ids)) for o in outs]
    return out


def accepted(drafts: Sequence[int], answer: Sequence[int], i: int) -> int:
    """How many of ``drafts`` match the answer from position ``i`` on."""
    a = 0
    while a < len(drafts) and drafts[a] == answer[i + a]:
        a += 1
    return a


def replay(answers: list[Answer], draft: Callable[[list[int], int], list[list[int]]],
           verify: Callable[[list[int], list[int]], bool] = lambda known, history: True,
           verify_cost: float = 1.0) -> tuple[float, float]:
    """(tokens per step, tokens per decode-step cost) of drafting rule ``draft(history, room)`` -> branches.
    ``verify(known, history)``: whether the step verifies (cost ``verify_cost``) or decodes (cost 1), decided
    from ``known``, the tokens read back when it is launched (all but the last step's)."""
    steps = tokens = 0
    cost = 0.0
    for prompt, answer in answers:
        history = list(prompt) + answer[:1]
        known_len, i = len(history), 1
        steps, cost = steps + 1, cost + 1  # the first token (prefill)
        while i < len(answer):
            room = len(answer) - i - 1
            verifies = verify(history[:known_len], history)
            best = max((accepted(b, answer, i) for b in draft(history, room)), default=0) if verifies and room else 0
            known_len = len(history)
            history.extend(answer[i : i + best + 1])
            i += best + 1
            steps, cost = steps + 1, cost + (verify_cost if verifies else 1.0)
        tokens += len(answer)
    return tokens / steps, tokens / cost


def lookup(k: int) -> Callable[[list[int], int], list[list[int]]]:
    return lambda history, room: [prompt_lookup(history, min(k, room), LO, HI)]


def branches(width: int, depth: int) -> Callable[[list[int], int], list[list[int]]]:
    """Up to ``width`` continuations with distinct first tokens: the longest matching n first, most recent
    occurrence first."""

    def draft(history: list[int], room: int) -> list[list[int]]:
        size, out, firsts = len(history), [], set()
        for n in range(min(HI, size - 1), LO - 1, -1):
            suffix = history[size - n :]
            for end in range(size - 1, n - 1, -1):
                if history[end - n : end] == suffix and history[end] not in firsts:
                    firsts.add(history[end])
                    out.append(history[end : end + min(depth, room)])
                    if len(out) == width:
                        return out
        return out

    return draft


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--answers", default=str(Path(__file__).parent / "results" / "replay_answers_cpu.json"),
                    help="answers JSON, made with --model if missing (default: %(default)s, made on 2026-11-23)")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--verify-cost", type=float, default=1.13, help="a verify step's cost in decode steps")
    args = ap.parse_args()
    path = Path(args.answers)
    if not path.exists():
        path.write_text(json.dumps(make_answers(args.model)))
    sets = json.loads(path.read_text())
    v, k = args.verify_cost, 15
    found = lambda known, history: bool(prompt_lookup(history, 1, LO, HI))  # noqa: E731  (an oracle)
    guessed = lambda known, history: bool(prompt_lookup(known, 1, LO, HI))  # noqa: E731  (the host's best guess)
    for name, answers in sets.items():
        print(f"{name}: {sum(len(a) for _, a in answers)} answer tokens")
        per_k = "  ".join(f"k={n}: {replay(answers, lookup(n))[0]:.2f}" for n in (3, 5, 7, 9, 11, 15, 23, 31))
        print(f"  tokens per step, lookup {LO}..{HI}: {per_k}")
        rules = (("every step verifies", lambda known, history: True), ("host guess", guessed), ("oracle", found))
        print(f"  verify = {v} decode steps, k = {k}, speedup over plain decoding: " + ", ".join(
            f"{label} {replay(answers, lookup(k), rule, v)[1]:.2f}x" for label, rule in rules))
        shapes = ((1, 15), (2, 7), (3, 5), (2, 15), (4, 15))
        print("  tokens per step with branches (width x depth): " + ", ".join(
            f"{w}x{d} {replay(answers, branches(w, d))[0]:.2f}" for w, d in shapes))


if __name__ == "__main__":
    main()
