"""Tests of `_batchapi/`: the Batch API route."""
