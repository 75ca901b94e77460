"""Server URLs are shown and stored without their credentials.

A ``--base-url`` may carry secrets: ``http://user:PASSWORD@host/v1`` or
``https://host/v1?api_key=KEY``. The real URL is used for requests only; everything written to
a run directory (``config.yaml``, ``usage.json``, ``cache.sqlite``, records) or printed goes
through :func:`redact_urls` first.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar
from urllib.parse import unquote_plus

T = TypeVar("T")

# Query parameters whose value is a credential (api_key, access_token, client_secret,
# password, auth, Azure's sig...). Others (api-version, deployment) are kept.
SECRET_PARAM = re.compile(r"key|token|secret|passw|pwd|auth|credential|signature|^sig$", re.I)
URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")


def redact_urls(value: T) -> T:
    """``value`` with every URL's ``user:password@`` and secret-looking query parameters
    removed: a bare URL, any text holding URLs (a model spec, a message), or the strings
    inside a dict / list / tuple (a config), recursively.

    >>> redact_urls("openai:m@http://user:pw@host:8000/v1?api_key=sk-1&api-version=2")
    'openai:m@http://host:8000/v1?api-version=2'
    >>> redact_urls({"base_url": "https://t0ken@api.example.com/v1?token=x", "n": 1})
    {'base_url': 'https://api.example.com/v1', 'n': 1}
    """
    out: Any = value
    if isinstance(value, str):
        out = URL.sub(lambda m: _redact(m.group(0)), value)
    elif isinstance(value, dict):
        out = {k: redact_urls(v) for k, v in value.items()}
    elif isinstance(value, list):
        out = [redact_urls(v) for v in value]
    elif isinstance(value, tuple):
        out = tuple(redact_urls(v) for v in value)
    return out


def _redact(url: str) -> str:
    start = url.index("://") + 3
    end = next((i for i, c in enumerate(url) if i >= start and c in "/?#"), len(url))
    authority = url[start:end].rpartition("@")[2]
    rest = url[end:]
    path, q, query = rest.partition("?")
    if q:
        query, hash_, fragment = query.partition("#")
        kept = [p for p in query.split("&")
                if p and not SECRET_PARAM.search(unquote_plus(p.partition("=")[0]))]
        rest = path + ("?" + "&".join(kept) if kept else "") + hash_ + fragment
    return url[:start] + authority + rest
