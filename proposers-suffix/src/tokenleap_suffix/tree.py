"""A suffix trie of bounded depth with occurrence counts, updated one token at a time.

What it holds
-------------
For token sequences ``s`` inserted into the trie, every substring of length ``1..D`` (``D`` =
``max_depth``) is a path from the root, and the node at the end of path ``p`` holds

    count(p)  = number of occurrences of ``p`` in the inserted sequences (never across two sequences)
    total(p)  = sum of count(p + x) over the children x = occurrences of ``p`` that continued with
                one more token inside the trie (an occurrence at the very end of a sequence, or one
                already ``D`` long, does not continue)
    best(p)   = the child with the highest count, ties to the smallest token id (cached; -1 means
                "not known, recompute from the children")

so ``count(p + x) / total(p)`` is the fraction of the continued occurrences of ``p`` that continued
with ``x``. Invariant: count(p + x) <= count(p), total(p) <= count(p).

Appending token ``t`` at position ``i`` adds the occurrences of the suffixes ``s[i-L+1 : i+1]`` for
``L = 1..D``. The nodes of the suffixes ending at ``i - 1`` (the *active* nodes: ``active[j]`` has
depth ``j + 1``) plus the root are exactly their parents, so one append extends each by one child:
O(D) work, independent of the sequence length. Removing a sequence replays the same walk and
decrements, freeing nodes whose count reaches zero: a removed sequence leaves nothing behind.

Layout
------
Nodes are integer ids (0 is the root) into parallel lists ``token``, ``count``, ``total``, ``best``,
``children``; freed ids are reused. ``children[n]`` is None (leaf), a child id (exactly one child,
whose token is ``token[id]``: most deep nodes, no dict), or a dict token -> child id. Nothing but
ints is stored, so the trie is a handful of Python objects: cheap for the garbage collector, and
about 70-100 bytes per node instead of ~300 for one object plus one dict per node.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

ROOT = 0


class SuffixTrie:
    """Bounded-depth suffix trie over one or more token sequences. See the module docstring."""

    __slots__ = ("max_depth", "token", "count", "total", "best", "children", "_free")

    def __init__(self, max_depth: int) -> None:
        if max_depth < 1:
            raise ValueError(f"max_depth must be >= 1, got {max_depth}")
        self.max_depth = max_depth
        self.token: list[int] = [-1]
        self.count: list[int] = [0]
        self.total: list[int] = [0]
        self.best: list[int] = [-1]
        self.children: list[None | int | dict[int, int]] = [None]
        self._free: list[int] = []

    @property
    def num_nodes(self) -> int:
        """Live nodes, excluding the root."""
        return len(self.token) - 1 - len(self._free)

    def child(self, node: int, token: int) -> int:
        """The child of ``node`` along ``token``, or -1."""
        kids = self.children[node]
        if kids is None:
            return -1
        if type(kids) is int:
            return kids if self.token[kids] == token else -1
        return kids.get(token, -1)  # type: ignore[union-attr]

    def child_ids(self, node: int) -> list[int]:
        kids = self.children[node]
        if kids is None:
            return []
        return [kids] if type(kids) is int else list(kids.values())  # type: ignore[union-attr]

    def best_child(self, node: int) -> int:
        """The most frequent child of ``node`` (ties: smallest token id). ``total[node]`` must be > 0."""
        best = self.best[node]
        if best < 0:
            count, token = self.count, self.token
            best = min(self.child_ids(node), key=lambda c: (-count[c], token[c]))
            self.best[node] = best
        return best

    # -- incremental updates --------------------------------------------------------------------
    def append(self, active: list[int], token: int) -> list[int]:
        """Add ``token`` after the sequence whose suffix nodes are ``active``; return the new ones."""
        tok, count, total, best, children = self.token, self.count, self.total, self.best, self.children
        new: list[int] = []
        parents = [ROOT]
        parents += active if len(active) < self.max_depth else active[:-1]
        for parent in parents:
            kids = children[parent]
            if kids is None:
                node = children[parent] = self._new_node(token)
            elif type(kids) is int:
                if tok[kids] == token:
                    node = kids
                else:
                    node = self._new_node(token)
                    children[parent] = {tok[kids]: kids, token: node}
            else:
                node = kids.get(token, -1)  # type: ignore[union-attr]
                if node < 0:
                    node = kids[token] = self._new_node(token)  # type: ignore[index]
            c = count[node] = count[node] + 1
            t = total[parent] = total[parent] + 1
            b = best[parent]
            if b < 0:
                if t == 1:  # the only child: trivially the best
                    best[parent] = node
            elif b != node and (c > count[b] or (c == count[b] and token < tok[b])):
                best[parent] = node
            new.append(node)
        return new

    def _new_node(self, token: int) -> int:
        if self._free:
            node = self._free.pop()
            self.token[node] = token  # count, total, children were reset when it was freed
            return node
        self.token.append(token)
        self.count.append(0)
        self.total.append(0)
        self.best.append(-1)
        self.children.append(None)
        return len(self.token) - 1

    def _unappend(self, active: list[int], token: int, dead: list[int]) -> list[int]:
        """Undo what :meth:`append` with the same arguments added; nodes that reach 0 go to ``dead``.

        A dead node is unlinked from its parent at once but freed only after the whole sequence is
        replayed, because the replay still walks through it to its (also dying) children.
        """
        count, total, best, children = self.count, self.total, self.best, self.children
        new: list[int] = []
        parents = [ROOT]
        parents += active if len(active) < self.max_depth else active[:-1]
        for parent in parents:
            kids = children[parent]
            node = kids if type(kids) is int else kids[token]  # type: ignore[index]
            count[node] -= 1
            total[parent] -= 1
            if best[parent] == node:
                best[parent] = -1  # may no longer be the best: recompute lazily
            if count[node] == 0:
                dead.append(node)
                if type(kids) is int:
                    children[parent] = None
                else:
                    del kids[token]  # type: ignore[union-attr]
                    if len(kids) == 1:  # type: ignore[arg-type]
                        children[parent] = next(iter(kids.values()))  # type: ignore[union-attr]
            new.append(node)
        return new

    # -- whole sequences ------------------------------------------------------------------------
    def insert(self, tokens: Iterable[int]) -> list[int]:
        """Insert a sequence; return the active nodes after its last token."""
        active: list[int] = []
        for token in tokens:
            active = self.append(active, token)
        return active

    def remove(self, tokens: Iterable[int]) -> None:
        """Remove a sequence previously inserted with :meth:`insert` (exactly the same tokens)."""
        active: list[int] = []
        dead: list[int] = []
        for token in tokens:
            active = self._unappend(active, token, dead)
        for node in dead:
            self.total[node] = 0
            self.best[node] = -1
            self.children[node] = None
            self.token[node] = -1
        self._free.extend(dead)

    # -- queries --------------------------------------------------------------------------------
    def match_tail(self, context: Sequence[int]) -> list[int]:
        """Nodes of the context's tails: ``result[m - 1]`` is the path ``context[-m:]``.

        Stops at the first tail that is not a path (longer tails cannot be either) or at ``max_depth``.
        Cost O(M^2) for M matched lengths; used only where no active nodes are kept (global trie).
        """
        out: list[int] = []
        n = len(context)
        tok, children = self.token, self.children
        for m in range(1, min(self.max_depth, n) + 1):
            node = ROOT
            for i in range(n - m, n):
                kids = children[node]
                if kids is None:
                    return out
                if type(kids) is int:
                    if tok[kids] != context[i]:
                        return out
                    node = kids
                else:
                    node = kids.get(context[i], -1)  # type: ignore[union-attr]
                    if node < 0:
                        return out
            out.append(node)
        return out
