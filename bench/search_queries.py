"""Distinct search queries over the stand-in's vocabulary, for the search cases.

Each query appears once in the list, and the list is longer than ownfeed's cache
of 256 rendered bodies, so a rotation through it measures the search itself,
not the cache.
"""

from __future__ import annotations

import itertools
import random

from bench.standin_data import TAGS, WORDS


def queries(count: int) -> list[str]:
    """Return `count` distinct queries: words, prefixes, hashtags, exclusions, pairs."""
    singles = list(WORDS)
    singles += [word[:3] for word in WORDS if len(word) > 4]
    singles += [f"#{tag}" for tag in TAGS]
    pairs = [f"{first} {second}" for first, second in itertools.permutations(WORDS, 2)]
    pairs += [f"{word} -{tag}" for word in WORDS for tag in TAGS]
    random.Random(7).shuffle(pairs)
    unique = list(dict.fromkeys(singles + pairs))
    if count > len(unique):
        raise ValueError(f"Only {len(unique)} distinct queries exist; asked {count}.")
    ordered = unique[:count]
    random.Random(11).shuffle(ordered)
    return ordered
