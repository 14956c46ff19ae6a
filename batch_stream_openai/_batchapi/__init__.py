"""``mode="batch"``: the provider's Batch API, at half price, behind the same stream.

- `route.py`: the batch loop's input: reads the caller's requests in a thread, answers
  what the journal or the cache has, spools the rest, hands answers back.
- `jobs.py`: the jobs: grouped by endpoint and model, uploaded, created, polled, read.
- `lines.py`: one job's lines on disk, and what each answer line says.
- `journal.py`: every job and answer on disk, so a re-run re-attaches instead of paying.
- `client.py`: the Batch API calls, through the openai SDK's own resources.
"""
