"""Money: what a request costs, the cap on what a batch spends, and answers kept so
that a re-run does not pay again.

- `prices.py`: a price per model (the caller's, else genai-prices') times usage.
- `cap.py`: ``max_cost``: reservations before a send, settled by the answer.
- `cache.py`: the response cache on disk (SQLite), keyed by exactly what is sent.
- `admission.py`: what a request passes before it is sent: the cache, in-flight
  duplicates, the cap; and each answer priced once.
"""
