"""What the parent and its workers share: messages, settings, and how answers read.

- `protocol.py`: the messages (`Task`, `Outcome`, `Cancel`, ...) and shared constants.
- `config.py`: the picklable settings each worker starts with (the key as a `Secret`).
- `bodies.py`: each request kind as an HTTP call, ``(endpoint, body)``.
- `answers.py`: an answer body read into a `Result` (text, usage, parsed); the
  `StoredAnswer` the cache and the journal keep.
- `statuses.py`: what an error status says about trying again.
- `failures.py`: SDK and HTTP failures as this library's picklable errors.
- `sources.py`: items that stand in for requests (`Answered`, `PENDING`).
- `litellm.py`: LiteLLM, imported on first use (quiet, its price map local).

Pure and light: nothing here imports the SDK at import time or starts anything.
"""
