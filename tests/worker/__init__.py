"""Tests of `_worker/`: the HTTP call."""
