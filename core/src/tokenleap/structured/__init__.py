"""Per-request constraints on the next token: logit_bias, allowed_token_ids, bad_words and structured outputs
(a grammar engine's token bitmask), applied at every verified position of a speculative step."""
