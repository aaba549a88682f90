"""How an answer is read: charset, compression, the body limit and a body cut at the deadline.
(The client on real connections, TLS included: tests/integration/test_transport.py.)"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator

import httpcore
import pytest

from relay.worker.transport import read_body


def answer(body: bytes | Iterator[bytes], *headers: tuple[str, str]) -> httpcore.Response:
    raw = [(name.encode(), value.encode()) for name, value in headers]
    return httpcore.Response(200, headers=raw, content=body)


def test_the_charset_of_the_content_type_decodes_the_body() -> None:
    body = "café ünïcode".encode("latin-1")
    got = read_body(answer(body, ("Content-Type", 'text/plain; Charset="ISO-8859-1"')), 100)
    assert got == "café ünïcode"


@pytest.mark.parametrize("content_type", ["", "text/plain", "text/plain; charset=no-such-set"])
def test_no_charset_or_an_unknown_one_reads_utf8(content_type: str) -> None:
    body = "naïve \xff".encode() + b"\xff"
    got = read_body(answer(body, ("Content-Type", content_type)), 100)
    assert got == "naïve \xff\ufffd"


@pytest.mark.parametrize(
    "encoding, pack",
    [("gzip", gzip.compress), ("deflate", zlib.compress), ("GZIP", gzip.compress)],
)
def test_a_compressed_body_is_inflated_up_to_the_limit(encoding: str, pack: object) -> None:
    assert callable(pack)
    text = '{"error": "bad field"}' + "x" * 100_000
    got = read_body(answer(pack(text.encode()), ("Content-Encoding", encoding)), 1000)
    assert got == text[:1000]


def test_a_broken_compressed_body_is_kept_with_a_note() -> None:
    got = read_body(answer(b"not gzip at all", ("Content-Encoding", "gzip")), 100)
    assert "the compressed body is broken" in got


def test_an_unknown_coding_is_kept_as_it_came() -> None:
    assert read_body(answer(b"plain", ("Content-Encoding", "br")), 100) == "plain"


def test_the_body_stops_at_the_limit() -> None:
    assert read_body(answer(iter([b"a" * 70, b"b" * 70, b"c" * 70])), 100) == "a" * 70 + "b" * 30


def test_a_body_still_arriving_at_the_deadline_is_cut_with_a_note() -> None:
    def trickle() -> Iterator[bytes]:
        yield b"partial "
        raise httpcore.ReadTimeout("the request's total deadline passed")

    got = read_body(answer(trickle()), 100)
    assert got.startswith("partial ") and "did not arrive before the request's deadline" in got
