"""Live figures a worker serves on its own /health but does not write to its database row:
prefix-cache reuse. Read over HTTP, in parallel, with a short timeout (no Streamlit here)."""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

# A page refresh waits at most this long for the slowest worker.
HEALTH_TIMEOUT_S = 0.5
MAX_PARALLEL_CALLS = 8


@dataclass(frozen=True)
class PrefixReuse:
    """Prompt tokens a worker has started on since it came up, and how many came from a
    reused KV-cache prefix instead of being decoded."""

    prompt_tokens: int
    cached_tokens: int

    @property
    def hit_rate(self) -> float | None:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else None


def read_prefix_reuse(url: str, timeout_s: float = HEALTH_TIMEOUT_S) -> PrefixReuse | None:
    """One worker's prefix reuse from its /health; None when it cannot say (unreachable, not
    loaded yet, or an external server that does not report it)."""
    try:
        body = httpx.get(f"{url.rstrip('/')}/health", timeout=timeout_s).json()
        return PrefixReuse(
            prompt_tokens=int(body["prompt_tokens_total"]),
            cached_tokens=int(body["cached_prompt_tokens_total"]),
        )
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None


def read_all_prefix_reuse(
    urls: Iterable[str], timeout_s: float = HEALTH_TIMEOUT_S
) -> dict[str, PrefixReuse]:
    """Prefix reuse of each worker URL that answered; the calls run side by side."""
    unique = list(dict.fromkeys(urls))
    if not unique:
        return {}
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_CALLS, len(unique))) as pool:
        answers = pool.map(lambda u: read_prefix_reuse(u, timeout_s), unique)
        return {u: a for u, a in zip(unique, answers, strict=True) if a is not None}
