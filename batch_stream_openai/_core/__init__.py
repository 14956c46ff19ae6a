"""One batch, in the parent: from the caller's options to each result handed back.

Read in this order:

- `options.py`: every option, declared once (docs, CLI flags, refusals come from it);
  `settings.py` and `checks.py`: a pool's arguments checked, with errors that name them.
- `modes.py`: ``mode="online" | "batch" | "flex"`` and what each needs.
- `batch.py`: one batch assembled: its input (`intake.py`), its policies, its delivery.
- `loop.py`: the batch loop, which drives the dispatcher against the pool's workers.
- `dispatcher.py`: the decisions, with no I/O: what to send, settle, re-send, give up.
  Its helpers: `ledger.py` (what is owed, where it runs, what is scheduled),
  `sender.py` (the budgets' gate, worker and endpoint choice, hedges), `known.py`
  (answers that need no provider: cache hits, duplicates, replays).
- `delivery.py`: what reaches the caller, once per index; `progress.py`: the bar.
- `supervisor.py`: keeps the workers alive (start, hear, replace, end the hung).

Nothing here talks HTTP: the policies it calls are in `_policy/` and `_spending/`, the
messages it exchanges with workers in `_wire/`.
"""
