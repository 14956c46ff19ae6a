"""Images for vision models: URLs pass as they are; files and bytes become data URLs.

``OpenAIRequest(images=[...])`` takes ``https://`` (or ``data:``) URLs, local file paths
and raw bytes. Files and bytes are read when the request is built (the request then
holds everything it sends, wherever its worker runs) and sent as base64 ``data:`` URLs
with their media type, from the file's name or, for bytes, from their first bytes.
"""

from __future__ import annotations

import base64
import mimetypes
import os
import re
from collections.abc import Sequence
from pathlib import Path

__all__ = ["image_urls"]

_URL_SCHEMES = ("http://", "https://", "data:")
# "ftp://host/cat.png": a URL of a scheme no API fetches, not a file named "ftp:/host/...".
_OTHER_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# The image types vision models take, by their first bytes.
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)
_MEDIA_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})


def image_urls(images: object, owner: str = "OpenAIRequest.images") -> tuple[str, ...]:
    """Each image as the URL to send; ValueError/TypeError naming the image at fault.

    Example:

    >>> image_urls(["https://example.com/cat.png", b"\\x89PNG\\r\\n\\x1a\\n"])
    ('https://example.com/cat.png', 'data:image/png;base64,iVBORw0KGgo=')
    """
    if isinstance(images, (str, bytes, os.PathLike)) or not isinstance(images, Sequence):
        raise TypeError(
            f"{owner} must be a list of image URLs, file paths or bytes, "
            f"got {type(images).__name__}"
        )
    return tuple(_image_url(image, f"{owner}[{i}]") for i, image in enumerate(images))


def _image_url(image: object, where: str) -> str:
    if isinstance(image, str) and image.startswith(_URL_SCHEMES):
        return image
    if isinstance(image, str) and (scheme := _OTHER_URL.match(image)) is not None:
        raise ValueError(
            f"{where}: {scheme.group(0)} URLs are not fetched by the APIs: give an http(s) "
            "or data: URL, a file path, or the bytes"
        )
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        return _data_url(data, _sniffed(data, where))
    if isinstance(image, (str, os.PathLike)):
        path = Path(image).expanduser()
        if not path.is_file():
            raise ValueError(f"{where}: no such image file {str(path)!r}")
        media_type = mimetypes.guess_type(path.name)[0]
        if media_type not in _MEDIA_TYPES:
            raise ValueError(
                f"{where}: {path.name!r} is not an image type vision models take "
                f"(png, jpeg, gif, webp), got {media_type or 'an unknown type'}"
            )
        return _data_url(path.read_bytes(), media_type)
    raise TypeError(f"{where} must be a URL, a file path or bytes, got {type(image).__name__}")


def _sniffed(data: bytes, where: str) -> str:
    for signature, media_type in _SIGNATURES:
        if data.startswith(signature):
            return media_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    raise ValueError(f"{where}: these bytes are not a png, jpeg, gif or webp image")


def _data_url(data: bytes, media_type: str) -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"
