"""Caption search and media-type filters for `/images` (the `q` and `type` parameters).

Captions and query terms are folded the same way by `normalize`: NFKD, then accents
and other diacritics are removed (Latin, Greek and Cyrillic accents, Hebrew points,
Arabic harakat and tatweel, emoji variation selectors), then casefold, then NFC. The
marks that carry meaning in other scripts (Devanagari vowel signs, Thai vowels,
Japanese voicing marks) are kept. A word is a run of `\\w` characters and combining
marks, and a hashtag is `#` plus a word, with no word character before the `#`.

How a query term matches a caption:

- A plain word (`cafe`) matches when a caption word, hashtag bodies included, begins
  with it: `cafe` finds "Café" and "cafés", `sun` finds "Sunny" and "#sunset".
- `#tag` matches only that exact hashtag: `#sun` finds "#Sun" but neither "#sunset"
  nor the plain word "sun".
- Any other term is matched as a substring of the folded caption. These are terms
  in scripts written without spaces (Chinese, Japanese, Thai, Lao, Khmer, Myanmar),
  so "東京" finds "東京タワーに行った", and terms with emoji or inner punctuation
  ("🌅", "rock-n-roll", "#rock-n-roll"). Hangul is matched by word prefix.
- `-term` excludes the posts that `term` would match. All other terms must match.

Punctuation around a term is dropped ("sun!" is "sun"). Terms that are empty after
that, such as `-` or `#` alone, are ignored. A caption of None matches no positive
term and no negative one, so only queries without positive terms keep it.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from messages import invalid_parameter_message

MAX_QUERY_LENGTH = 200
MEDIA_TYPES = frozenset({"IMAGE", "VIDEO", "CAROUSEL_ALBUM"})


def _build_fold_table() -> dict[int, str]:
    """Map the characters that folding removes to "", and stroked letters to a base."""
    table: dict[int, str] = {}

    accent_blocks = [
        (0x0300, 0x036F),  # Combining Diacritical Marks
        (0x0591, 0x05C7),  # Hebrew points and cantillation
        (0x0610, 0x061A),  # Arabic signs
        (0x064B, 0x065F),  # Arabic harakat, and hamza after NFKD splits alef forms
        (0x0670, 0x0670),  # Arabic superscript alef
        (0x06D6, 0x06ED),  # Arabic Quranic marks
        (0x08D3, 0x08FF),  # Arabic Extended-A marks
        (0x1AB0, 0x1AFF),  # Combining Diacritical Marks Extended
        (0x1DC0, 0x1DFF),  # Combining Diacritical Marks Supplement
        (0x20D0, 0x20FF),  # Combining Diacritical Marks for Symbols
        (0xFE00, 0xFE0F),  # variation selectors, such as the emoji selector U+FE0F
        (0xFE20, 0xFE2F),  # Combining Half Marks
        (0xE0100, 0xE01EF),  # Variation Selectors Supplement
    ]
    for first, last in accent_blocks:
        for code_point in range(first, last + 1):
            if unicodedata.category(chr(code_point)) in ("Mn", "Me"):
                table[code_point] = ""

    # Tatweel, bidirectional controls, zero-width space, soft hyphen and BOM.
    invisible = [0x0640, 0x061C, 0x00AD, 0x200B, 0x200E, 0x200F, 0xFEFF]
    invisible += [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]
    for code_point in invisible:
        table[code_point] = ""

    # Letters whose stroke or ligature NFKD keeps, and curly apostrophes.
    letters = {"ø": "o", "ł": "l", "đ": "d", "ħ": "h", "ŧ": "t", "æ": "ae", "œ": "oe"}
    for letter, base in letters.items():
        table[ord(letter)] = base
        table[ord(letter.upper())] = base
    for apostrophe in "\u2018\u2019\u02bc":
        table[ord(apostrophe)] = "'"

    return table


def _class_ranges(code_points: list[int]) -> str:
    """Return a regex character class body that lists sorted code points as ranges."""
    ranges: list[list[int]] = []
    for point in code_points:
        if ranges and ranges[-1][1] == point - 1:
            ranges[-1][1] = point
        else:
            ranges.append([point, point])
    return "".join(f"{chr(first)}-{chr(last)}" for first, last in ranges)


def _combining_marks() -> list[int]:
    """List the combining marks (Mn, Mc, Me) of the Basic Multilingual Plane."""
    code_points = range(0x0300, 0x10000)
    categories = map(unicodedata.category, map(chr, code_points))
    pairs = zip(code_points, categories, strict=True)
    return [point for point, category in pairs if category[0] == "M"]


_FOLD_TABLE = _build_fold_table()
_FOLD_RE = re.compile(f"[{_class_ranges(sorted(_FOLD_TABLE))}]")
# Python's \w leaves out combining marks, which would split Devanagari or Thai words.
# NOTE: marks above U+FFFF (Chakma, Adlam, historic scripts) still split words,
# because adding them makes this class about twice as slow to match in CPython 3.11.
_WORD_CHAR = rf"[\w{_class_ranges(_combining_marks())}]"
_WORD_RE = re.compile(rf"{_WORD_CHAR}+")
# The lookbehind sits after the "#" so that the regex engine can scan for "#" quickly.
_HASHTAG_RE = re.compile(rf"#(?<!{_WORD_CHAR}#)({_WORD_CHAR}+)")
_NO_SPACE_SCRIPT_RE = re.compile(
    "[\u0e00-\u0eff"  # Thai, Lao
    "\u1000-\u109f"  # Myanmar
    "\u1780-\u17ff"  # Khmer
    "\u3005-\u3007\u3040-\u30ff\u3100-\u312f\u31f0-\u31ff"  # kana, Bopomofo
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]"  # Han
)


class QueryError(ValueError):
    """An invalid `q` or `type` value. `parameter` names the query parameter."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter
        self.message = message


def _fold_character(match: re.Match[str]) -> str:
    return _FOLD_TABLE[ord(match.group())]


def normalize(text: str) -> str:
    """Fold text for matching: compatibility forms, diacritics and case."""
    if text.isascii():
        return text.casefold()
    text = unicodedata.normalize("NFKD", text)
    text = _FOLD_RE.sub(_fold_character, text)
    return unicodedata.normalize("NFC", text.casefold())


@lru_cache(maxsize=4096)
def _is_prefix_term(term: str) -> bool:
    """Return whether a normalised plain term matches by word prefix, not substring."""
    return _WORD_RE.fullmatch(term) is not None and not _NO_SPACE_SCRIPT_RE.search(term)


@dataclass(frozen=True)
class Query:
    """Normalised search terms. `matches` requires every include and no exclude.

    `include_words` and `exclude_words` hold plain terms, `include_tags` and
    `exclude_tags` hashtag bodies without the `#`.
    """

    include_words: tuple[str, ...] = ()
    include_tags: tuple[str, ...] = ()
    exclude_words: tuple[str, ...] = ()
    exclude_tags: tuple[str, ...] = ()
    # The plain terms split by how they match, so `matches` does not reclassify them.
    _include_prefixes: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _include_substrings: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _exclude_prefixes: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _exclude_substrings: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        include = _split_by_matching(self.include_words)
        exclude = _split_by_matching(self.exclude_words)
        object.__setattr__(self, "_include_prefixes", include[0])
        object.__setattr__(self, "_include_substrings", include[1])
        object.__setattr__(self, "_exclude_prefixes", exclude[0])
        object.__setattr__(self, "_exclude_substrings", exclude[1])


def _split_by_matching(
    words: tuple[str, ...],
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Split plain terms into those matched by word prefix and those by substring."""
    if not words:
        return (), ()
    prefixes = tuple(word for word in words if _is_prefix_term(word))
    if len(prefixes) == len(words):
        return prefixes, ()
    return prefixes, tuple(word for word in words if not _is_prefix_term(word))


@dataclass(frozen=True)
class SearchKey:
    """A caption prepared for matching: its words, hashtags and whole folded text."""

    words: tuple[str, ...]  # sorted and unique, for prefix lookup with bisect
    tags: frozenset[str]
    text: str


_EMPTY_KEY = SearchKey(words=(), tags=frozenset(), text="")


def _is_punctuation(char: str) -> bool:
    """Return whether a character is punctuation, a separator or a control character."""
    return unicodedata.category(char)[0] in "PZC"


def _strip_punctuation(term: str, keep_leading: str = "") -> str:
    """Remove punctuation from both ends, except a leading `keep_leading` character."""
    start, end = 0, len(term)
    while start < end and term[start] != keep_leading and _is_punctuation(term[start]):
        start += 1
    while end > start and _is_punctuation(term[end - 1]):
        end -= 1
    return term[start:end]


# Visitors' queries tend to reuse a small vocabulary, and folding a term costs more than
# the rest of parsing a query, so the parsed terms are kept. Terms are at most
# MAX_QUERY_LENGTH characters, which bounds the memory.
@lru_cache(maxsize=4096)
def _parse_term(raw: str) -> tuple[bool, bool, str] | None:
    """Parse one query term into (excluded, is_tag, value), or None when empty."""
    term = normalize(raw)
    excluded = term.startswith("-")
    if excluded:
        term = term[1:]
    term = _strip_punctuation(term, keep_leading="#")
    if not term.startswith("#"):
        return (excluded, False, term) if term else None
    body = _strip_punctuation(term[1:])
    if not body:
        return None
    if _WORD_RE.fullmatch(body):
        return excluded, True, body
    # Not a hashtag as captions spell them ("#rock-n-roll", "#🌅"): match the text.
    return excluded, False, f"#{body}"


def parse_query(text: str | None) -> Query | None:
    """Parse the `q` parameter, or return None when it contains no usable term.

    Raises QueryError when `text` is longer than MAX_QUERY_LENGTH characters.
    """
    if text is None:
        return None
    if len(text) > MAX_QUERY_LENGTH:
        valid = f"at most {MAX_QUERY_LENGTH} characters of search terms"
        raise QueryError(
            "q", invalid_parameter_message("q", text, valid, "is too long")
        )
    # Included words, included tags, excluded words and excluded tags. Dicts
    # keep the first of repeated terms, in order.
    buckets: tuple[dict[str, None], ...] = ({}, {}, {}, {})
    for raw in text.split():
        parsed = _parse_term(raw)
        if parsed is not None:
            excluded, is_tag, value = parsed
            buckets[2 * excluded + is_tag][value] = None
    if not any(buckets):
        return None
    include_words, include_tags, exclude_words, exclude_tags = map(tuple, buckets)
    return Query(include_words, include_tags, exclude_words, exclude_tags)


def parse_types(text: str | None) -> frozenset[str] | None:
    """Parse the `type` parameter into upper-case media types, or None when empty.

    Values are comma-separated, case-insensitive and may have spaces around them.
    Raises QueryError naming the first unknown value.
    """
    if text is None:
        return None
    types = set()
    for item in text.split(","):
        name = item.strip().upper()
        if not name:
            continue
        if name not in MEDIA_TYPES:
            valid = "a comma-separated list of image, video and carousel_album"
            raise QueryError(
                "type",
                invalid_parameter_message(
                    "type", item.strip(), valid, "contains an invalid value"
                ),
            )
        types.add(name)
    return frozenset(types) or None


def search_key(caption: str | None) -> SearchKey:
    """Fold a caption into the words, hashtags and text that queries match."""
    if not caption:
        return _EMPTY_KEY
    text = normalize(caption)
    return SearchKey(
        words=tuple(sorted(set(_WORD_RE.findall(text)))),
        tags=frozenset(_HASHTAG_RE.findall(text)),
        text=text,
    )


def _has_word_with_prefix(words: tuple[str, ...], prefix: str) -> bool:
    """Return whether a sorted word tuple contains a word beginning with `prefix`."""
    index = bisect_left(words, prefix)
    return index < len(words) and words[index].startswith(prefix)


def matches(query: Query, key: SearchKey) -> bool:
    """Return whether a caption's key has every included term and no excluded one."""
    words = key.words
    for tag in query.include_tags:
        if tag not in key.tags:
            return False
    for prefix in query._include_prefixes:
        if not _has_word_with_prefix(words, prefix):
            return False
    for substring in query._include_substrings:
        if substring not in key.text:
            return False

    if any(tag in key.tags for tag in query.exclude_tags):
        return False
    if any(_has_word_with_prefix(words, prefix) for prefix in query._exclude_prefixes):
        return False
    return not any(substring in key.text for substring in query._exclude_substrings)


class SearchIndex:
    """The kept posts' words, hashtags and media types, each mapped to its posts.

    A set of posts is an int whose bit i stands for post i, so a query costs a
    few bitwise operations per term instead of a check of every caption. Only
    terms matched as substrings (see the module docstring) scan the captions.
    The masks of prefixes and substrings are kept, up to `TERM_CACHE_SIZE`.
    Memory: at most one bit per post for each distinct word and hashtag.
    """

    TERM_CACHE_SIZE = 4096

    def __init__(
        self, keys: Sequence[SearchKey], media_types: Sequence[str | None]
    ) -> None:
        if len(keys) != len(media_types):
            raise ValueError(
                f"SearchIndex needs one media type per search key, but got "
                f"{len(keys)} keys and {len(media_types)} media types."
            )
        self.size = len(keys)
        self.everything = (1 << self.size) - 1
        words: dict[str, int] = {}
        tags: dict[str, int] = {}
        types: dict[str | None, int] = {}
        for position, (key, media_type) in enumerate(
            zip(keys, media_types, strict=True)
        ):
            bit = 1 << position
            for word in key.words:
                words[word] = words.get(word, 0) | bit
            for tag in key.tags:
                tags[tag] = tags.get(tag, 0) | bit
            types[media_type] = types.get(media_type, 0) | bit
        self._vocabulary = sorted(words)
        self._word_masks = [words[word] for word in self._vocabulary]
        self._tag_masks = tags
        self._type_masks = types
        self._texts = [key.text for key in keys]
        self._term_masks: dict[tuple[bool, str], int] = {}

    def select(self, query: Query | None, types: frozenset[str] | None) -> int:
        """Return the mask of the posts of a type in `types` that match `query`."""
        selected = self.everything
        if types is not None:
            selected = 0
            for media_type in types:
                selected |= self._type_masks.get(media_type, 0)
        if query is None:
            return selected
        for tag in query.include_tags:
            selected &= self._tag_masks.get(tag, 0)
        for prefix in query._include_prefixes:
            selected &= self._term_mask(True, prefix)
        for substring in query._include_substrings:
            selected &= self._term_mask(False, substring)
        for tag in query.exclude_tags:
            selected &= ~self._tag_masks.get(tag, 0)
        for prefix in query._exclude_prefixes:
            selected &= ~self._term_mask(True, prefix)
        for substring in query._exclude_substrings:
            selected &= ~self._term_mask(False, substring)
        return selected

    def _term_mask(self, is_prefix: bool, term: str) -> int:
        cached = self._term_masks.get((is_prefix, term))
        if cached is not None:
            return cached
        mask = 0
        if is_prefix:
            vocabulary = self._vocabulary
            position = bisect_left(vocabulary, term)
            while position < len(vocabulary) and vocabulary[position].startswith(term):
                mask |= self._word_masks[position]
                position += 1
        else:
            for position, text in enumerate(self._texts):
                if term in text:
                    mask |= 1 << position
        if len(self._term_masks) >= self.TERM_CACHE_SIZE:
            self._term_masks.clear()
        self._term_masks[(is_prefix, term)] = mask
        return mask


def positions(mask: int) -> Iterator[int]:
    """Yield the positions of the set bits of `mask`, lowest first."""
    if mask & (mask + 1) == 0:
        # Every bit from the lowest up is set, as for an unfiltered feed.
        yield from range(mask.bit_length())
        return
    while mask:
        lowest = mask & -mask
        yield lowest.bit_length() - 1
        mask ^= lowest


def filter_posts(
    posts: list[dict],
    index: SearchIndex,
    query: Query | None,
    types: frozenset[str] | None,
) -> list[dict]:
    """Return the posts whose media type is in `types` and whose caption matches.

    `index` is built from the same posts, in the same order; a None filter keeps
    every post. Order is kept. Raises ValueError when their lengths differ.
    """
    if len(posts) != index.size:
        raise ValueError(
            f"filter_posts needs the index of these posts, but got {len(posts)} "
            f"posts and an index of {index.size}. Rebuild the index when the "
            "feed changes."
        )
    return [posts[position] for position in positions(index.select(query, types))]
