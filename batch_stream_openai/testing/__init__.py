"""Test helpers: a fast, fault-injecting, OpenAI-compatible fake server.

Example:

>>> import openai
>>> from batch_stream_openai.testing import FakeOpenAIServer, expected_answer
>>> with FakeOpenAIServer() as server:
...     client = openai.OpenAI(base_url=server.base_url, api_key="sk-test")
...     reply = client.chat.completions.create(
...         model="m", messages=[{"role": "user", "content": "Hi"}]
...     )
>>> reply.choices[0].message.content == expected_answer("", "Hi")
True

The server runs in its own process (`server.py`); its routes live in `app.py` (the Batch
API's in `batches.py`, Anthropic's Messages and Message Batches in `anthropic.py`,
Gemini's in `gemini.py`, Azure OpenAI's paths in `azure.py`), and the ``[[...]]``
fault-injection directives in `directives.py`.
"""

from .directives import expected_answer
from .server import FakeOpenAIServer
from .settings import RecordedRequest, ServerStats

__all__ = [
    "FakeOpenAIServer",
    "RecordedRequest",
    "ServerStats",
    "expected_answer",
]
