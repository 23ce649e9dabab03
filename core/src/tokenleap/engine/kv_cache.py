"""Paged KV cache bookkeeping: fixed-size blocks, reference counts and prefix caching.

Block 0 is the null block: padding tokens write there and no request ever owns it. A block enters
the prefix cache only when it is full of computed tokens; its key is a hash chained over every token
before it, so a hit means the whole prefix is identical. Unreferenced cached blocks stay cached in
LRU order until a new allocation evicts them.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Sequence

NULL_BLOCK = 0


def chain_hash(parent: bytes, block_tokens: Sequence[int]) -> bytes:
    return hashlib.blake2b(parent + array("q", block_tokens).tobytes(), digest_size=16).digest()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if num_blocks < 2:
            raise ValueError(f"num_blocks={num_blocks}: the KV cache needs at least 2 blocks (one is reserved)")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._ref_counts = [0] * num_blocks
        self._free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(1, num_blocks))
        self._hash_of_block: dict[int, bytes] = {}
        self._block_of_hash: dict[bytes, int] = {}
        self.prefix_queries = 0  # prompt tokens looked up
        self.prefix_hits = 0  # of which found in the cache

    @property
    def num_usable_blocks(self) -> int:
        return self.num_blocks - 1

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_usable_blocks

    def blocks_needed(self, num_tokens: int, num_owned: int) -> int:
        return max(0, -(-num_tokens // self.block_size) - num_owned)

    def lookup_prefix(self, token_ids: Sequence[int]) -> tuple[list[int], list[bytes]]:
        """Longest run of cached full blocks that prefix ``token_ids``, leaving at least one token to
        compute. The blocks are referenced (the caller owns them from here)."""
        if not self.enable_prefix_caching:
            return [], []
        bs = self.block_size
        blocks: list[int] = []
        hashes: list[bytes] = []
        parent = b""
        for i in range((len(token_ids) - 1) // bs):
            h = chain_hash(parent, token_ids[i * bs : (i + 1) * bs])
            block = self._block_of_hash.get(h)
            if block is None:
                break
            blocks.append(block)
            hashes.append(h)
            parent = h
        for block in blocks:
            self._take(block)
        self.prefix_queries += len(token_ids)
        self.prefix_hits += len(blocks) * bs
        return blocks, hashes

    def allocate(self, count: int) -> list[int] | None:
        """``count`` fresh blocks, evicting least recently freed cached blocks; None if too few."""
        if count > len(self._free):
            return None
        out = []
        for _ in range(count):
            block, _ = self._free.popitem(last=False)
            old = self._hash_of_block.pop(block, None)
            if old is not None and self._block_of_hash.get(old) == block:
                del self._block_of_hash[old]
            self._ref_counts[block] = 1
            out.append(block)
        return out

    def free(self, blocks: Sequence[int]) -> None:
        """Drop one reference of each block; tail blocks first so that prefixes are evicted last."""
        for block in reversed(blocks):
            self._ref_counts[block] -= 1
            if self._ref_counts[block] == 0:
                self._free[block] = None

    def cache_full_blocks(
        self, blocks: Sequence[int], hashes: list[bytes], token_ids: Sequence[int], num_computed: int
    ) -> None:
        """Register every block fully covered by ``num_computed`` tokens; extends ``hashes`` in place."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        for i in range(len(hashes), num_computed // bs):
            parent = hashes[-1] if hashes else b""
            h = chain_hash(parent, token_ids[i * bs : (i + 1) * bs])
            hashes.append(h)
            if h not in self._block_of_hash:
                self._block_of_hash[h] = blocks[i]
                self._hash_of_block[blocks[i]] = h

    def _take(self, block: int) -> None:
        if self._ref_counts[block] == 0:
            del self._free[block]
        self._ref_counts[block] += 1

    def num_cached_blocks(self) -> int:
        return len(self._block_of_hash)
