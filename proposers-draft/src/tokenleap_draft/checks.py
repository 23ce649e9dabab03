"""What must hold between a draft and its target, checked before the draft's weights load."""

from __future__ import annotations

from collections.abc import Sequence

# Strings whose token ids the two tokenizers must agree on: words, code, numbers, whitespace, punctuation, and
# text outside ASCII.
SAMPLE_TEXTS: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "Speculative decoding drafts tokens; the target verifies them in one forward pass.",
    "  indented\tand\ttabbed  lines\n\n",
    "3.14159 + 2.71828 = 5.85987; 1,000,000 / 7 ≈ 142857.14",
    "Ünïcödé, 日本語, emoji 🚀 and «quotes».",
    '{"key": [1, 2, 3], "nested": {"a": null}}',
)


def check_vocab(draft_vocab: int, target_vocab: int, draft: str) -> None:
    if draft_vocab != target_vocab:
        raise ValueError(
            f"speculative_config.model={draft!r} has a vocabulary of {draft_vocab} tokens, the target "
            f"{target_vocab}: draft_model needs a draft with the target's tokenizer and vocabulary"
        )


def check_tokenizers(draft_tokenizer, target_tokenizer, draft: str, texts: Sequence[str] = SAMPLE_TEXTS) -> None:
    """The two tokenizers give the same token ids on every sample string."""
    if draft_tokenizer is None or target_tokenizer is None:
        return
    for text in texts:
        a = list(draft_tokenizer.encode(text, add_special_tokens=False))
        b = list(target_tokenizer.encode(text, add_special_tokens=False))
        if a != b:
            raise ValueError(
                f"speculative_config.model={draft!r}: its tokenizer and the target's disagree on {text!r} "
                f"(draft ids {a[:12]}{'...' if len(a) > 12 else ''}, target ids {b[:12]}"
                f"{'...' if len(b) > 12 else ''}): draft_model needs a draft with the target's tokenizer"
            )


def check_positions(draft_max_positions: int, target_max_model_len: int, speculative_max_model_len: int | None,
                    draft: str) -> None:
    """The draft must reach every position speculation runs at: the target's max_model_len, or the speculative
    max_model_len when it caps speculation lower."""
    needed = speculative_max_model_len or target_max_model_len
    if draft_max_positions < needed:
        raise ValueError(
            f"speculative_config.model={draft!r} has max_position_embeddings={draft_max_positions}, below the "
            f"{'speculative' if speculative_max_model_len else 'target'} max_model_len={needed}; set "
            f"speculative_config.max_model_len <= {draft_max_positions} to stop drafting past it, or lower "
            f"max_model_len"
        )


def check_tensor_parallel(draft_tp: int) -> None:
    """Without the engine's model loader (a simulated engine) the draft can only load whole."""
    if draft_tp != 1:
        raise ValueError(
            f"speculative_config.draft_tensor_parallel_size={draft_tp}: without the engine's model loader "
            f"(ProposerContext.model_loader) the draft runs whole on one device; use 1"
        )
