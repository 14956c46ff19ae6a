"""Decisions with no I/O, each keeping its own state; the dispatcher calls their verbs.

- `limits.py`: the concurrency and ``rpm``/``tpm`` budget, and the token estimate.
- `concurrency.py`: ``max_concurrency="auto"``, a gradient limiter per endpoint.
- `retry.py`: what is worth retrying and when (`Retries`: backoff, failover, flex
  fallback; `Tries`: one request's state).
- `fleet.py`: the endpoints: least in flight first, failing ones set aside.
- `hedging.py`: which stragglers get a duplicate, and when.
- `quarantine.py`: requests whose workers died: re-sent alone, then given up.
"""
