"""clip-back's `deduplicate`: among the results, drop every one within 0.94 cosine of a better one.

clip-back links each pair of results whose normalised vectors have an inner product above 0.94
(faiss `range_search`), takes the connected components, and keeps only the best-ranked member of each.
The same here: one matrix product, then union-find over the (few) linked pairs.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

THRESHOLD = 0.94


def duplicates(vectors: npt.NDArray[np.float32], threshold: float = THRESHOLD) -> set[int]:
    """Positions (in rank order) of results that a better-ranked result makes redundant."""
    n = len(vectors)
    if n < 2:
        return set()
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = vectors / np.where(norms == 0, 1, norms)
    pairs = np.argwhere(np.triu((unit @ unit.T) > threshold, k=1))
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs.tolist():
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)  # the better-ranked (lower) position stays the component's root
    return {i for i in range(n) if root(i) != i}
