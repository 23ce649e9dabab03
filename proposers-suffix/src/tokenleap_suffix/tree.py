"""A suffix trie of bounded depth with occurrence counts, updated one token at a time.

The data structure
------------------
For token sequences ``s`` inserted into the trie, every substring of length ``1..D`` (``D`` =
``max_depth``) is a path from the root, and the node at the end of path ``p`` holds

    count(p)  = number of occurrences of ``p`` in the inserted sequences (never across two sequences)
    total(p)  = sum of count(p + x) over the children x = occurrences of ``p`` that continued with
                one more token inside the trie (an occurrence at the very end of a sequence, or one
                already ``D`` long, does not continue)
    best(p)   = the child with the highest count, ties to the smallest token id (cached; None means
                "not known, recompute from the children")

so ``count(p + x) / total(p)`` is the fraction of the continued occurrences of ``p`` that continued
with ``x``.

Appending token ``t`` at position ``i`` adds the occurrences of the suffixes ``s[i-L+1 : i+1]`` for
``L = 1..D``. The nodes of the suffixes ending at ``i - 1`` (the *active* nodes, ``active[j]`` has
depth ``j + 1``) are exactly the parents of the new ones, plus the root, so one append extends each
of them by one child: O(D) work, independent of the sequence length. Removing a sequence replays the
same walk and decrements, deleting nodes whose count reaches zero, so a removed sequence leaves no
node, count or cached ``best`` behind.

Invariant: count(p + x) <= count(p) and total(p) <= count(p); a node is deleted only when its whole
subtree is (a child's occurrences are occurrences of its parent).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


class Node:
    """One trie node: the path from the root to it is a token string. ``children`` is None when empty."""

    __slots__ = ("token", "count", "total", "children", "best")

    def __init__(self, token: int) -> None:
        self.token = token
        self.count = 0
        self.total = 0
        self.children: dict[int, Node] | None = None
        self.best: Node | None = None


def best_child(node: Node) -> Node:
    """The most frequent child of ``node`` (ties: smallest token id). ``node.total`` must be > 0."""
    best = node.best
    if best is None:
        best = None
        for child in node.children.values():  # type: ignore[union-attr]
            if best is None or child.count > best.count or (
                child.count == best.count and child.token < best.token
            ):
                best = child
        node.best = best
    return best  # type: ignore[return-value]


class SuffixTrie:
    """Bounded-depth suffix trie over one or more token sequences. See the module docstring."""

    def __init__(self, max_depth: int) -> None:
        if max_depth < 1:
            raise ValueError(f"max_depth must be >= 1, got {max_depth}")
        self.max_depth = max_depth
        self.root = Node(-1)
        self.num_nodes = 0  # excluding the root

    # -- incremental updates --------------------------------------------------------------------
    def append(self, active: list[Node], token: int) -> list[Node]:
        """Add ``token`` after the sequence whose suffix nodes are ``active``; return the new ones."""
        root = self.root
        parents = active if len(active) < self.max_depth else active[:-1]
        new = [self._add_child(root, token)]
        add = self._add_child
        for parent in parents:
            new.append(add(parent, token))
        return new

    def _add_child(self, parent: Node, token: int) -> Node:
        children = parent.children
        if children is None:
            children = parent.children = {}
        node = children.get(token)
        if node is None:
            node = children[token] = Node(token)
            self.num_nodes += 1
        count = node.count = node.count + 1
        parent.total += 1
        best = parent.best
        if best is None:
            if parent.total == 1:  # the only child: trivially the best
                parent.best = node
        elif best is not node and (count > best.count or (count == best.count and token < best.token)):
            parent.best = node
        return node

    def unappend(self, active: list[Node], token: int) -> list[Node]:
        """Undo what :meth:`append` with the same arguments added; return the next active nodes.

        Nodes whose count drops to zero are unlinked from their parent (their own children follow
        as the replay reaches them, so the returned nodes may already be detached).
        """
        parents = [self.root]
        parents.extend(active if len(active) < self.max_depth else active[:-1])
        new = []
        for parent in parents:
            children = parent.children
            node = children[token]  # type: ignore[index]
            node.count -= 1
            parent.total -= 1
            if parent.best is node:
                parent.best = None  # may no longer be the best: recompute lazily
            if node.count == 0:
                del children[token]  # type: ignore[arg-type]
                self.num_nodes -= 1
                if not children:
                    parent.children = None
            new.append(node)
        return new

    # -- whole sequences ------------------------------------------------------------------------
    def insert(self, tokens: Iterable[int]) -> list[Node]:
        """Insert a sequence; return the active nodes after its last token."""
        active: list[Node] = []
        for token in tokens:
            active = self.append(active, token)
        return active

    def remove(self, tokens: Iterable[int]) -> None:
        """Remove a sequence previously inserted with :meth:`insert` (exactly the same tokens)."""
        active: list[Node] = []
        for token in tokens:
            active = self.unappend(active, token)

    # -- queries --------------------------------------------------------------------------------
    def match_tail(self, context: Sequence[int]) -> list[Node]:
        """Nodes of the context's tails: ``result[m - 1]`` is the path ``context[-m:]``.

        Stops at the first tail that is not a path (longer tails cannot be either) or at ``max_depth``.
        Cost O(M^2) for M matched lengths; used only where no active nodes are kept (global trie).
        """
        out: list[Node] = []
        n = len(context)
        root = self.root
        for m in range(1, min(self.max_depth, n) + 1):
            node = root
            for i in range(n - m, n):
                children = node.children
                node = children.get(context[i]) if children is not None else None  # type: ignore[assignment]
                if node is None:
                    return out
            out.append(node)
        return out
