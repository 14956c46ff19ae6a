"""Tests of `_spending/`: prices, the cost cap, the response cache."""
