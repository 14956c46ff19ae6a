"""Tests of `files/`: the JSONL formats (the file runner is tested through the CLI)."""
