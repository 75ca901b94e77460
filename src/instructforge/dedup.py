"""What counts as a duplicate, for every command: Magpie's live filter, ``analyze`` and
``filter`` all use this module.

- **Exact duplicate**: the same text after :func:`normalise` (Unicode NFKC, case-folded,
  punctuation dropped, whitespace collapsed).
- **Near-duplicate**: the MinHash (``datasketch``, :data:`NUM_PERM` permutations) estimate of
  the Jaccard similarity of the two texts' character :data:`SHINGLE_CHARS`-gram sets (of the
  normalised text) is at least a threshold, :data:`NEAR_DUP_THRESHOLD` by default.  Character
  shingles, not word n-grams: instructions are short, and one changed word knocks out three
  of twenty word 3-grams but only a few of a hundred character 5-grams, so light rewordings
  are caught while a different request on the same topic is not.
- **Embedding near-duplicate**: cosine similarity of sentence embeddings at least a threshold
  (:data:`EMBEDDING_THRESHOLD` by default).

The streaming indexes (:class:`ExactDedup`, :class:`NearDedup`) keep what they were given
and answer for each new text; the batch functions walk a list in order and keep the first of
every group, so the earliest record wins. Each batch function returns
``{index_of_duplicate: (index_of_the_kept_original, similarity)}``.

>>> exact_duplicates(["Name a fruit.", "name a  FRUIT", "Name a tree."])
{1: (0, 1.0)}
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence

import numpy as np

from instructforge.records import Rejection

NEAR_DUP_THRESHOLD = 0.7
EMBEDDING_THRESHOLD = 0.95
SHINGLE_CHARS = 5
NUM_PERM = 128
_LSH_MAX_THRESHOLD = 0.9

Duplicates = dict[int, tuple[int, float]]

_WORD = re.compile(r"\w+", re.UNICODE)


def normalise(text: str) -> str:
    """Case-, accent-width-, punctuation- and whitespace-insensitive form for duplicate checks.

    >>> normalise("  What IS  a cat? ")
    'what is a cat'
    """
    t = unicodedata.normalize("NFKC", text or "").casefold()
    return " ".join(_WORD.findall(t))


def shingles(text: str, n: int = SHINGLE_CHARS) -> set[str]:
    """Character ``n``-grams of the normalised text (the whole text when it is shorter).

    >>> sorted(shingles("A cat!", 4))
    [' cat', 'a ca']
    """
    t = normalise(text)
    return {t[i: i + n] for i in range(max(1, len(t) - n + 1))}


class ExactDedup:
    """Exact duplicates after :func:`normalise`; remembers what it has kept."""

    def __init__(self) -> None:
        self._seen: dict[str, str] = {}

    @staticmethod
    def _key(text: str) -> str:
        return hashlib.sha256(normalise(text).encode("utf-8")).hexdigest()

    def match(self, text: str, exclude: str | None = None) -> str | None:
        """The id of the kept text equal to ``text`` (other than ``exclude``), or None."""
        first = self._seen.get(self._key(text))
        return first if first is not None and first != exclude else None

    def check(self, text: str, exclude: str | None = None) -> Rejection | None:
        """A rejection naming the kept record with the same text, or None.

        ``exclude`` is the asking record's own id: on resume it may already be indexed.
        """
        if (first := self.match(text, exclude)) is not None:
            return Rejection("exact_duplicate", f"same instruction as {first}",
                             {"duplicate_of": first})
        return None

    def add(self, text: str, record_id: str) -> None:
        self._seen.setdefault(self._key(text), record_id)

    def __len__(self) -> int:
        return len(self._seen)


def _band_key(band: bytes) -> bytes:
    """An LSH band's key: 8 bytes instead of the band's raw hash values."""
    return hashlib.blake2b(band, digest_size=8).digest()


class NearDedup:
    """Near-duplicates by MinHash LSH over character shingles (see the module docstring)."""

    def __init__(self, threshold: float = NEAR_DUP_THRESHOLD, num_perm: int = NUM_PERM) -> None:
        from datasketch import MinHash, MinHashLSH

        self.threshold = threshold
        self.num_perm = num_perm
        # Band keys hashed to 8 bytes, and only each kept text's hash values (not a MinHash
        # object with its own copy of the permutations, made anew for every text): about
        # 4.7 KiB per kept text instead of 6.4, and half the time per check.
        # LSH only proposes candidates (each is confirmed below); above ~0.9 datasketch finds
        # no band layout for 128 permutations, so thresholds up to 1.0 propose at 0.9.
        self._lsh = MinHashLSH(threshold=min(threshold, _LSH_MAX_THRESHOLD), num_perm=num_perm,
                               hashfunc=_band_key)
        proto = MinHash(num_perm=num_perm, seed=1)
        self._permutations, self._scheme = proto.permutations, proto.scheme
        self._hashes: dict[str, np.ndarray] = {}
        self._order: dict[str, int] = {}  # when each was added: ties go to the earliest

    def _minhash(self, text: str):  # -> datasketch.MinHash
        from datasketch import MinHash

        m = MinHash(num_perm=self.num_perm, seed=1, permutations=self._permutations,
                    scheme=self._scheme)
        m.update_batch([s.encode("utf-8") for s in shingles(text)])
        return m

    def match(self, text: str, exclude: str | None = None) -> tuple[str, float] | None:
        """``(id, similarity)`` of the most similar kept text (other than ``exclude``) at or
        above the threshold, the earliest kept on a tie; None when there is none."""
        m = self._minhash(text)
        best: tuple[float, int, str] | None = None
        for key in self._lsh.query(m):
            if key == exclude:
                continue
            sim = float(np.count_nonzero(m.hashvalues == self._hashes[key])) / self.num_perm
            cand = (sim, -self._order[key], key)
            if sim >= self.threshold and (best is None or cand > best):
                best = cand
        return None if best is None else (best[2], best[0])

    def check(self, text: str, exclude: str | None = None) -> Rejection | None:
        """A rejection naming the most similar kept record (other than ``exclude``), or None."""
        if (found := self.match(text, exclude)) is None:
            return None
        key, sim = found
        return Rejection("near_duplicate",
                         f"near-duplicate of {key} (MinHash Jaccard {sim:.2f} >= "
                         f"{self.threshold})",
                         {"duplicate_of": key, "jaccard": round(sim, 3)})

    def add(self, text: str, record_id: str) -> None:
        if record_id in self._hashes:
            return
        m = self._minhash(text)
        self._hashes[record_id] = m.hashvalues
        self._order[record_id] = len(self._order)
        self._lsh.insert(record_id, m)

    def __len__(self) -> int:
        return len(self._hashes)


def exact_duplicates(texts: Sequence[str]) -> Duplicates:
    """Texts equal to an earlier one after :func:`normalise`."""
    index = ExactDedup()
    dups: Duplicates = {}
    for i, t in enumerate(texts):
        if (first := index.match(t)) is not None:
            dups[i] = (int(first), 1.0)
        else:
            index.add(t, str(i))
    return dups


def minhash_duplicates(
    texts: Sequence[str], *, threshold: float = NEAR_DUP_THRESHOLD, num_perm: int = NUM_PERM,
) -> Duplicates:
    """Texts that are near-duplicates (see the module docstring) of an earlier *kept* text.

    >>> a = "Write a short poem about the sea at night with stars"
    >>> dups = minhash_duplicates([a, a + " please", "Explain how a diesel engine works"])
    >>> list(dups), dups[1][0]
    ([1], 0)
    """
    index = NearDedup(threshold, num_perm)
    dups: Duplicates = {}
    for i, t in enumerate(texts):
        if not normalise(t):
            continue  # empty text: nothing to compare (exact dedup catches repeats)
        if (found := index.match(t)) is not None:
            dups[i] = (int(found[0]), round(found[1], 4))
        else:
            index.add(t, str(i))
    return dups


def embedding_duplicates(
    vectors: np.ndarray, *, threshold: float = EMBEDDING_THRESHOLD, block: int = 1024
) -> Duplicates:
    """Rows whose cosine similarity to an earlier *kept* row is at least ``threshold``.

    >>> v = np.array([[1.0, 0.0], [0.99, 0.05], [0.0, 1.0]])
    >>> embedding_duplicates(v, threshold=0.95)
    {1: (0, 0.9987)}
    """
    v = np.asarray(vectors, dtype=np.float32)
    n = v.shape[0]
    if n < 2:
        return {}
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    v = v / np.where(norms == 0, 1, norms)
    kept = np.ones(n, dtype=bool)
    dups: Duplicates = {}
    for start in range(0, n, block):
        end = min(n, start + block)
        sims = v[start:end] @ v[:end].T
        for i in range(start, end):
            row = sims[i - start, :i]
            # Only kept rows count: a duplicate of a duplicate joins the original's group.
            cand = np.flatnonzero((row >= threshold - 1e-6) & kept[:i])
            if cand.size:
                j = int(cand[np.argmax(row[cand])])
                dups[i] = (j, round(float(row[j]), 4))
                kept[i] = False
    return dups
