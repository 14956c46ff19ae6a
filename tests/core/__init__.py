"""Tests of `_core/`: one batch in the parent."""
