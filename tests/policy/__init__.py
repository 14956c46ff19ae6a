"""Tests of `_policy/`: limits, retries, endpoints, hedging."""
