"""`image_url` queries: fetched only when the operator allows it, within a size and a time limit.

An open fetcher lets any client make the service request URLs on its network (server-side request forgery), so
it is off unless `--allow-image-urls`; then only http(s), no redirects to other schemes, at most
`max_bytes` read and `timeout` seconds spent.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import aiohttp

from ingest.core.errors import BadRequestError

URLS_OFF = "image_url queries are off on this service (the operator can allow them with --allow-image-urls)"


class ImageFetcher:
    def __init__(self, allowed: bool, max_bytes: int, timeout: float) -> None:
        self.allowed = allowed
        self.max_bytes = max_bytes
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def fetch(self, url: str) -> bytes:
        if not self.allowed:
            raise BadRequestError(URLS_OFF, status=403)
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BadRequestError("image_url must be an http:// or https:// URL")
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout), trust_env=False, auto_decompress=True
            )
        try:
            async with self._session.get(url, max_redirects=3) as resp:
                if resp.status != 200:
                    raise BadRequestError(f"image_url answered HTTP {resp.status}")
                declared = resp.content_length
                if declared is not None and declared > self.max_bytes:
                    raise BadRequestError(f"image_url is {declared} bytes: over the {self.max_bytes}-byte limit")
                data = bytearray()
                async for chunk in resp.content.iter_chunked(1 << 16):
                    data += chunk
                    if len(data) > self.max_bytes:
                        raise BadRequestError(f"image_url is over the {self.max_bytes}-byte limit")
                return bytes(data)
        except TimeoutError:
            raise BadRequestError(f"image_url did not arrive within {self.timeout:g} s", status=400) from None
        except aiohttp.ClientError as exc:
            raise BadRequestError(f"image_url cannot be fetched: {type(exc).__name__}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
