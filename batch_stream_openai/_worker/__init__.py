"""The worker side: what runs in each worker process (or thread, or Ray actor).

- `main.py`: the entry point: read tasks from the pipe, hand them to the task server,
  write outcomes back.
- `server.py`: the task server: one asyncio loop running attempts concurrently, the
  caller's ``postprocess``, cancels, and the messages back to the parent.
- `providers.py`: the HTTP call itself (aiohttp with the openai SDK's headers, or
  LiteLLM), one request body in, its answer or an exception out.

Nothing here decides: retries, budgets and routing are the parent's (`_core/`).
"""
