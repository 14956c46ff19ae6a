"""LiteLLM, imported where a route first needs it (the import takes ~5 s): its price map
read from the package instead of downloaded, its debug banners off."""

from __future__ import annotations

import os
from typing import Any

from ..errors import ProviderNotInstalledError

__all__ = ["import_litellm"]

_EXTRA_HINT = "pip install batch-stream-openai[litellm]"


def import_litellm(needed_by: str) -> Any:
    """The `litellm` module; `ProviderNotInstalledError` naming `needed_by` (what goes
    through it) and the extra to install when it is absent."""
    # Without this, importing litellm tries to download a model cost map.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        import litellm
    except ImportError:
        raise ProviderNotInstalledError(
            f"{needed_by}, which is not installed: {_EXTRA_HINT}"
        ) from None
    litellm.suppress_debug_info = True
    return litellm
