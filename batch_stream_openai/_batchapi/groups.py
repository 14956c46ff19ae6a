"""The open groups of the job route: requests written down until they make a job.

Each request is written, as its provider's input line, into the open group of its
endpoint and model (a job holds one model: OpenAI's API wants one per file, and each
provider has its own). A group is full at `batch_size` lines, its provider's
`max_lines`, or near its `max_bytes`; it then becomes a job (`jobs.py`). Under
``max_cost`` each line's worst case is reserved as it is written, at the batch price:
every attempt is reserved anew, and a line that leaves its job unanswered (to go again,
or online) has its reservation released.
"""

from __future__ import annotations

import time
from typing import Any

from .._policy.limits import token_estimate
from .._spending.cap import Reservation, Spending
from ..errors import BudgetExceededError
from .journal import JobRecord, Journal
from .lines import Job, batch_line, line_digest
from .options import JobOptions
from .provider import Providers

__all__ = ["Groups"]


class Groups:
    """The groups being filled, by endpoint and model (see the module docstring).

    Parameters:
        journal: where each group's files go.
        options: the batch size.
        providers: each model's adapter (its lines and limits).
        spending: the batch's ``max_cost``, or None.
    """

    def __init__(
        self,
        journal: Journal,
        options: JobOptions,
        providers: Providers,
        spending: Spending | None,
    ) -> None:
        self._journal = journal
        self._options = options
        self._providers = providers
        self._spending = spending
        self._open: dict[tuple[str, str], Job] = {}

    def __repr__(self) -> str:
        return f"<Groups open={len(self._open)} lines={self.lines}>"

    @property
    def lines(self) -> int:
        """Lines written and not yet in a job."""
        return sum(group.lines for group in self._open.values())

    def add(self, index: int, request: Any) -> Job | None:
        """Write `request` into its group: the group it found full (now closed, to become
        a job), or None. Raises `ValueError` for a request its provider cannot take, and
        `BudgetExceededError` when its worst case does not fit under ``max_cost``."""
        provider = self._providers.of(request.model)
        endpoint, model, line = provider.line(index, request)
        # Digests are of the OpenAI form, whichever provider: a re-run compares requests.
        same_form = provider.name == "openai"
        digest = line_digest(line if same_form else batch_line(index, request)[2])
        reserved = self._reserve(index, request)
        full = self._open.get((endpoint, model))
        size = min(self._options.batch_size, provider.max_lines)
        if full is not None and (full.lines >= size or full.size + len(line) > provider.max_bytes):
            del self._open[(endpoint, model)]
            full.close_files()
        else:
            full = None
        group = self._open.get((endpoint, model))
        if group is None:
            key = f"job-{time.time_ns():x}"
            group = Job(JobRecord(key, endpoint, model, "spooled"), self._journal.job_dir(key))
            self._open[(endpoint, model)] = group
        group.write(index, line, request, digest)
        if reserved is not None:
            group.reserved[index] = reserved
        return full

    def take_all(self) -> list[Job]:
        """Every open group, closed (to become jobs)."""
        groups = list(self._open.values())
        self._open.clear()
        for group in groups:
            group.close_files()
        return groups

    def indices(self) -> set[int]:
        return {index for group in self._open.values() for index in group.indices}

    def close_files(self) -> None:
        for group in self._open.values():
            group.close_files()

    def _reserve(self, index: int, request: Any) -> Reservation | None:
        """Reserve the line's worst case (hours before any answer: nothing to wait for)."""
        if self._spending is None:
            return None
        prompt_tokens, cap = token_estimate(request)
        reserved = self._spending.reserve(
            request.model, prompt_tokens, cap, tier="batch", learn_first=False
        )
        if reserved is None:
            raise BudgetExceededError(
                f"not sent: it could take the batch's spend past "
                f"max_cost=${self._spending.max_cost:g}",
                index=index,
            )
        return reserved
