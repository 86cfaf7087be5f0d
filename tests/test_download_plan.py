"""The HTTP source's pure parts: shard URLs under a root (credentials and queries kept out of what is shown),
Range requests and Content-Range replies, which bytes of a body to keep, directory listings, and which failures
are retried."""

from __future__ import annotations

import aiohttp
import pytest

from ingest.core.errors import ConfigError, MissingSourceFile, SourceError, TransientSourceError
from ingest.stages.download import (
    BodyPlan,
    ContentRange,
    check_root,
    client_error,
    display_url,
    join_url,
    parse_content_range,
    parse_listing,
    plan_body,
    range_header,
    status_error,
)


@pytest.mark.parametrize(
    ("root", "want"),
    [
        ("http://h:8/emb/", "http://h:8/emb/img_emb/img_emb_3.npy"),
        ("http://h:8/emb", "http://h:8/emb/img_emb/img_emb_3.npy"),
        ("http://h:8", "http://h:8/img_emb/img_emb_3.npy"),
        ("https://h/a/b/?sig=xyz", "https://h/a/b/img_emb/img_emb_3.npy?sig=xyz"),
        ("https://h/a%20b/", "https://h/a%20b/img_emb/img_emb_3.npy"),  # an encoded root stays as given
    ],
)
def test_join_url(root: str, want: str) -> None:
    assert join_url(root, "img_emb/img_emb_3.npy") == want


def test_display_url_drops_credentials_and_query() -> None:
    assert display_url("https://u:pw@h:9/x/y.npy?token=s3cret#f") == "https://h:9/x/y.npy"
    assert display_url("http://[::1]:8080/a?b=c") == "http://[::1]:8080/a"


def test_check_root() -> None:
    check_root("http://127.0.0.1:1/")
    for bad in ("ftp://h/", "http:///path", "127.0.0.1:8000"):
        with pytest.raises(ConfigError):
            check_root(bad)


def test_range_header() -> None:
    assert range_header(0) == {}
    assert range_header(1024) == {"Range": "bytes=1024-"}
    with pytest.raises(ValueError):
        range_header(-1)


def test_parse_content_range() -> None:
    assert parse_content_range("bytes 100-199/1000") == ContentRange(100, 199, 1000)
    assert parse_content_range("bytes 0-0/*") == ContentRange(0, 0, None)
    assert parse_content_range("bytes */1000") == ContentRange(None, None, 1000)
    assert parse_content_range("BYTES 5-9/10") == ContentRange(5, 9, 10)
    for bad in ("bytes 10-5/100", "bytes 0-100/100", "items 0-1/2", "bytes 1-2", ""):
        with pytest.raises(ValueError):
            parse_content_range(bad)


def test_plan_body() -> None:
    assert plan_body(200, 0, 500, None) == BodyPlan(0, 500)
    assert plan_body(200, 300, 500, None) == BodyPlan(0, 500), "a 200 to a Range request is the whole file"
    assert plan_body(206, 300, 200, "bytes 300-499/500") == BodyPlan(300, 500)
    assert plan_body(206, 300, 200, "bytes 300-499/*") == BodyPlan(300, 500)
    assert plan_body(206, 300, 100, "bytes 400-499/500") is None, "a range we did not ask for: start over"
    assert plan_body(206, 300, 100, None) is None
    assert plan_body(206, 300, 100, "garbage") is None


def test_parse_listing() -> None:
    html = '<a href="img_emb_10.npy">img_emb_10.npy</a><a href="img_emb_2.npy">x</a><a href="img_emb_2.npy.part">'
    assert parse_listing(html + '<a href="../">..</a><a href="text_emb_7.npy">') == [2, 10]
    assert parse_listing("<html>nothing here</html>") == []


def test_status_classes() -> None:
    assert isinstance(status_error(404, "a.npy", "http://h/a.npy"), MissingSourceFile)
    for transient in (500, 502, 503, 429, 408):
        err = status_error(transient, "a.npy", "http://h/a.npy")
        assert isinstance(err, TransientSourceError) and err.retriable
    forbidden = status_error(403, "a.npy", "http://h/a.npy?token=t0ps3cret")
    assert type(forbidden) is SourceError and not forbidden.retriable
    assert "403" in str(forbidden) and "t0ps3cret" not in str(forbidden)


def test_client_errors_are_mapped_without_leaking_tokens() -> None:
    from multidict import CIMultiDict, CIMultiDictProxy
    from yarl import URL

    url = "http://u:pw@h:1/x.npy?token=t0ps3cret"
    info = aiohttp.RequestInfo(URL(url), "GET", CIMultiDictProxy(CIMultiDict()), URL(url))
    cases: list[tuple[BaseException, type[SourceError], bool]] = [
        (aiohttp.ClientResponseError(info, (), status=400, message="Bad Request"), TransientSourceError, True),
        (aiohttp.ClientOSError(104, f"reset talking to {url}"), TransientSourceError, True),
        (aiohttp.ClientPayloadError("Response payload is not completed"), TransientSourceError, True),
        (TimeoutError(), TransientSourceError, True),
        (aiohttp.InvalidURL(url), SourceError, False),
    ]
    for exc, cls, retriable in cases:
        err = client_error(exc, "x.npy", url)
        assert isinstance(err, cls) and err.retriable is retriable, (exc, err)
        assert "x.npy" in str(err) and "t0ps3cret" not in str(err) and "pw" not in str(err), str(err)
