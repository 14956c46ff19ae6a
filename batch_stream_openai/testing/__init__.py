"""Test helpers: a fast, fault-injecting, OpenAI-compatible fake server.

Example::

    from batch_stream_openai.testing import FakeOpenAIServer, expected_answer

    with FakeOpenAIServer() as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="sk-test")
        ...

The server runs in its own process; see :mod:`batch_stream_openai.testing.server`
for the ``[[...]]`` fault-injection directives.
"""

from batch_stream_openai.testing.server import (
    FakeOpenAIServer,
    RecordedRequest,
    ServerStats,
    expected_answer,
)

__all__ = [
    "FakeOpenAIServer",
    "RecordedRequest",
    "ServerStats",
    "expected_answer",
]
