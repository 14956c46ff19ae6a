"""``mode="batch"``: the providers' batch APIs, at half price, behind the same stream.

- `route.py`: the batch loop's input: reads the caller's requests in a thread, answers
  what the journal or the cache has, spools the rest, hands answers back.
- `groups.py`: the open groups: each request written as its provider's line, by endpoint
  and model, its worst case reserved under ``max_cost``.
- `jobs.py`: the jobs at every provider: created, polled, read, sent again or online.
- `provider.py`: what a provider's batch API is to the jobs, and which provider takes a
  model; `openai.py` (OpenAI's Batch API) and `anthropic.py` (Message Batches) are the
  adapters, each through its own SDK.
- `lines.py`: one job's lines on disk, and what each answer line says.
- `journal.py`: every job and answer on disk, so a re-run re-attaches instead of paying.
"""
