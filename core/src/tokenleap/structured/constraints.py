"""One request's constraints on the next token, and the rows they give a (speculative) step.

A step verifies 1 + d positions of a request: the position after its last output token and the position
after each of its d drafts. Each constraint is evaluated at every one of them with the context it would have
there (output + the drafts before it): bad words look back at that context; the grammar matcher is advanced
along the drafts to give each position its bitmask and is rolled back afterwards. A draft the grammar refuses
gets a mask under which the target gives it probability 0, so it is rejected, and the positions after it are
never used (left unmasked). After verification ``accept`` advances the matcher by the tokens kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from tokenleap.sampling_params import SamplingParams
from tokenleap.structured import grammar


def bitmask_words(vocab_size: int) -> int:
    return (vocab_size + 31) // 32


def ids_bitmask(token_ids: list[int], vocab_size: int) -> np.ndarray:  # [words] int32
    """Bit t of the mask (word t // 32, bit t % 32) set for each id in ``token_ids``."""
    bits = np.zeros(bitmask_words(vocab_size) * 32, dtype=np.uint8)
    bits[np.asarray(token_ids, dtype=np.int64)] = 1
    return np.packbits(bits, bitorder="little").view(np.int32)


def check_vocab(params: SamplingParams, vocab_size: int) -> None:
    """Token ids in logit_bias / allowed_token_ids must be in the model's vocabulary."""
    for name, ids in (("logit_bias", list(params.logit_bias or {})), ("allowed_token_ids", params.allowed_token_ids)):
        bad = [t for t in ids or [] if not 0 <= t < vocab_size]
        if bad:
            raise ValueError(
                f"sampling_params.{name} has token id(s) {bad[:5]} outside the vocabulary [0, {vocab_size})"
            )


def bad_word_sequences(words: list[str], tokenizer: Any) -> list[list[int]]:
    """Token sequences of each bad word, as written and after a space (how it appears mid-sentence)."""
    if tokenizer is None:
        raise ValueError("sampling_params.bad_words needs a tokenizer; this model was loaded without one")
    seqs: list[list[int]] = []
    for word in words:
        for text in (word, " " + word.lstrip()):
            ids = list(tokenizer.encode(text, add_special_tokens=False))
            if ids and ids not in seqs:
                seqs.append(ids)
    return seqs


@dataclass
class StepRows:
    """What a step's constrained rows need, as host lists (uploaded once by the model runner)."""

    ban_rows: list[int] = field(default_factory=list)
    ban_ids: list[int] = field(default_factory=list)
    bias_rows: list[int] = field(default_factory=list)
    bias_ids: list[int] = field(default_factory=list)
    bias_values: list[float] = field(default_factory=list)
    mask_rows: list[int] = field(default_factory=list)
    masks: list[torch.Tensor] = field(default_factory=list)  # each [rows of one request, words] int32


class RequestConstraints:
    """The constraints of one request (one completion): built when it is added, state kept across steps."""

    def __init__(self, params: SamplingParams, tokenizer: Any, vocab_size: int, stop_token_ids: list[int]) -> None:
        check_vocab(params, vocab_size)
        self.vocab_size = vocab_size
        self.bias_ids = [int(t) for t in params.logit_bias or {}]
        self.bias_values = [float(v) for v in (params.logit_bias or {}).values()]
        self.allowed = ids_bitmask(params.allowed_token_ids, vocab_size) if params.allowed_token_ids else None
        self.bad_words = bad_word_sequences(params.bad_words, tokenizer) if params.bad_words else []
        self.matcher = None
        if params.structured_outputs is not None:
            compiled = grammar.compile_constraint(params.structured_outputs, tokenizer, vocab_size)
            self.matcher = grammar.new_matcher(compiled, stop_token_ids)

    def add_rows(self, out: StepRows, first_row: int, output_ids: list[int], drafts: list[int]) -> None:
        """Append the constraints of rows first_row .. first_row + len(drafts) (one per verified position)."""
        n = len(drafts) + 1
        for i in range(n):
            row = first_row + i
            if self.bias_ids:
                out.bias_rows.extend([row] * len(self.bias_ids))
                out.bias_ids.extend(self.bias_ids)
                out.bias_values.extend(self.bias_values)
            for token in self._banned(output_ids, drafts[:i]):
                out.ban_rows.append(row)
                out.ban_ids.append(token)
        if self.matcher is None and self.allowed is None:
            return
        masks = torch.full((n, bitmask_words(self.vocab_size)), -1, dtype=torch.int32)  # [n, words]
        if self.matcher is not None:
            self._grammar_masks(masks, drafts)
        if self.allowed is not None:
            masks &= torch.from_numpy(self.allowed)[None, :]
        out.mask_rows.extend(range(first_row, first_row + n))
        out.masks.append(masks)

    def _banned(self, output_ids: list[int], drafts: list[int]) -> list[int]:
        """Last tokens of bad words whose other tokens end the context (output + drafts before the row)."""
        banned: set[int] = set()
        for seq in self.bad_words:
            m = len(seq) - 1
            if m == 0 or (output_ids[-m:] + drafts)[-m:] == seq[:-1]:
                banned.add(seq[-1])
        return sorted(banned)

    def _grammar_masks(self, masks: torch.Tensor, drafts: list[int]) -> None:
        """Row i: the grammar's allowed tokens after the drafts before it; rows past a refused draft stay
        all-allowed (never used). The matcher ends where it started."""
        advanced = 0
        for i in range(len(drafts) + 1):
            if self.matcher.is_terminated():
                break
            grammar.fill_bitmask(self.matcher, masks, i)
            if i == len(drafts) or not _allows(masks[i], drafts[i]) or not self.matcher.accept_token(drafts[i]):
                break
            advanced += 1
        if advanced:
            self.matcher.rollback(advanced)

    def accept(self, tokens: list[int]) -> None:
        """Advance the grammar by the tokens a step kept (verified: each was allowed)."""
        if self.matcher is None:
            return
        for t in tokens:
            if self.matcher.is_terminated():
                return
            if not self.matcher.accept_token(t):
                raise RuntimeError(f"structured outputs: the grammar refused emitted token {t}, which its mask allowed")


def _allows(mask: torch.Tensor, token: int) -> bool:
    """Bit ``token`` of a [words] int32 bitmask (a draft outside the mask is refused without asking the matcher)."""
    return 0 <= token < mask.shape[0] * 32 and bool((int(mask[token // 32]) >> (token % 32)) & 1)


def for_request(params: SamplingParams, tokenizer: Any, vocab_size: int,
                stop_token_ids: list[int]) -> RequestConstraints | None:
    """The request's constraints, or None when it has none. Raises ValueError naming the bad field."""
    if not params.has_constraints:
        return None
    return RequestConstraints(params, tokenizer, vocab_size, stop_token_ids)
