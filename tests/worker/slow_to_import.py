"""A module that takes 4 s to import, as one that loads a model or a big library does: a
worker imports it when it unpickles a postprocess defined here."""

from __future__ import annotations

import os
import time

time.sleep(4.0)


def with_pid(text: str) -> tuple[str, int]:
    return text, os.getpid()
