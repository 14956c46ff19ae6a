"""The fake server's prefix cache: what a GPU server keeps of the prompts it has read.

vLLM (automatic prefix caching) and SGLang (its radix cache) keep the attention state
of the prompts they prefilled, in blocks of tokens, and a request whose prompt starts
with cached blocks skips their prefill. With ``prefix_cache=T`` the fake server keeps
T tokens of blocks (`BLOCK_TOKENS` each, least recently used evicted first); with
``prefill_rate=R`` it takes a request's uncached prompt tokens / R seconds to prefill
them, in its capacity slot, before its latency (the decode). A block is cached once
the request that read it has prefilled it: requests that arrive together with the
same new prefix all miss, as on a real server. What was cached is reported as
``usage.prompt_tokens_details.cached_tokens`` (Anthropic's ``cache_read_input_tokens``,
Gemini's ``cachedContentTokenCount``).
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["BLOCK_TOKENS", "PrefixCache"]

BLOCK_TOKENS = 16  # vLLM's default block size
_BLOCK_CHARS = BLOCK_TOKENS * 4  # the fake server counts characters / 4 as a token


class PrefixCache:
    """Blocks of prompt text, chained (a block is the same only after the same blocks),
    least recently used evicted first.

    Example:

    >>> cache = PrefixCache()
    >>> prompt = "x" * 640  # 160 tokens: 10 blocks
    >>> cached, blocks = cache.lookup(prompt, capacity_tokens=1000)
    >>> cached  # tokens cached: none yet
    0
    >>> cache.store(blocks, 1000)  # prefilled: its blocks are kept
    >>> cache.lookup(prompt + " and a question", 1000)[0]
    160
    """

    def __init__(self) -> None:
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def __repr__(self) -> str:
        return f"<PrefixCache blocks={len(self._blocks)}>"

    def __len__(self) -> int:
        return len(self._blocks)

    def lookup(self, prompt: str, capacity_tokens: float) -> tuple[int, list[int]]:
        """Tokens of `prompt` cached (whole blocks from its start), and its blocks' keys
        (for `store`); the cached blocks count as used now."""
        keys, chained = [], 0
        for start in range(0, len(prompt) - _BLOCK_CHARS + 1, _BLOCK_CHARS):
            chained = hash((chained, prompt[start : start + _BLOCK_CHARS]))
            keys.append(chained)
        if capacity_tokens < BLOCK_TOKENS:
            return 0, keys
        hits = 0
        for key in keys:
            if key not in self._blocks:
                break
            self._blocks.move_to_end(key)
            hits += 1
        return hits * BLOCK_TOKENS, keys

    def store(self, keys: list[int], capacity_tokens: float) -> None:
        """Keep `keys` (a prefilled prompt's blocks), evicting the least recently used
        beyond `capacity_tokens`."""
        blocks = self._blocks
        for key in keys:
            blocks[key] = None
            blocks.move_to_end(key)
        most = int(capacity_tokens // BLOCK_TOKENS)
        while len(blocks) > most:
            blocks.popitem(last=False)

    def clear(self) -> None:
        self._blocks.clear()
