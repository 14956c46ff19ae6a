"""Batch API JSONL files through the pool: ``batch-stream-openai run`` and `run_batch_file`.

- `run.py`: `run_batch_file`: check every line, then send what the output lacks,
  appending one output line per ``custom_id``; resumable, shardable, preemptible.
- `jsonl.py`: the input and output line formats.
- `report.py`: `FileRunReport`, what a run did.
- `stats.py`: `RunStats`, the figures of the runs that wrote an output file
  (``batch-stream-openai report``); `charts.py` draws them into an HTML page.
- `preemption.py`: SIGTERM: send nothing new, give what is in flight ``grace`` seconds.
- `diskspace.py`: room on disk for the output, checked before and while sending.

Example:

>>> from pathlib import Path
>>> from batch_stream_openai.files import run_batch_file
>>> line = '{"custom_id": "q1", "system_prompt": "Be brief.", "user_prompt": "Hi"}'
>>> _ = Path("in.jsonl").write_text(line + '\\n')
>>> run_batch_file("in.jsonl", "out.jsonl", model="gpt-4o-mini", rpm=500).complete
True
"""

from .report import FileRunReport
from .run import run_batch_file
from .stats import RunStats

__all__ = ["FileRunReport", "RunStats", "run_batch_file"]
