"""A fast, deterministic stand-in for the OpenAI, Anthropic and Gemini APIs (demo, tests,
benchmark).

A small HTTP/1.1 server on raw asyncio streams (keep-alive, Content-Length and chunked bodies);
no framework, no database, so it serves thousands of requests per second on one core and can
be the benchmark's upstream. Start it with `manage.py mock_upstream --port 8001`, or in tests
with `start_in_thread()`. Split by protocol: `common.py` (the plan), `script.py` (scripted
answers), `openai.py`, `anthropic.py`, `gemini.py`, `ledger.py`, `server.py`.

Endpoints (matched by path suffix, so `/v1/...`, Azure's `/openai/deployments/<d>/...` and a
bare prefix all work):
  POST .../chat/completions   stream and not; `stream_options.include_usage` honoured as
                              OpenAI does (usage chunk with `choices: []` before [DONE])
  POST .../responses          stream (named events, usage in response.completed) and not
  POST .../embeddings         float or base64 vectors
  GET  .../models             the mock model list
  POST .../messages           Anthropic Messages, stream and not, with cache usage fields
  POST .../messages/count_tokens  {"input_tokens": N}, N as a call would be charged; never
                              in the ledger (its "counted" says how many were answered)
  POST .../models/{model}:generateContent         Gemini, whole; usageMetadata with the
  POST .../models/{model}:streamGenerateContent   cached part inside promptTokenCount and
                              thoughts apart (thoughtsTokenCount); the stream (SSE, any `alt`)
                              carries the counts so far in every chunk, the final ones with
                              the finishReason; errors in Google's shape
  POST .../model/{modelId}/converse         Bedrock Converse, whole; usage with inputTokens
  POST .../model/{modelId}/converse-stream  apart from cacheRead/WriteInputTokens; the stream
                              is AWS's binary event stream (messageStart, contentBlockDelta,
                              messageStop, metadata with the usage)
  GET  /_mock/last            the last API request seen: method, path, headers, body, outcome
  GET  /_mock/requests        the last 200 of them, oldest first; DELETE clears the list
  GET  /_mock/ledger          every answer served in full, by the x-request-id it came with:
                              count and token totals (what a metering proxy must have recorded);
                              and under "cut" every stream that stopped early after producing
                              output (the client left, or a stream error), with the tokens
                              produced until then and why; DELETE clears both

Usage is deterministic. Input tokens = o200k count of the prompt text (metering.tokens) +
fixed image/file allowances + 3 per message. The reply is N tokens of fixed words, exactly one
o200k token each, where N = min(output limit from the request, wanted length; 20 unless asked).

Scripted answers, selected by the request (`script.py`), so a client's loop runs: a tool call
when tools are offered and the latest turn is no tool result (the tool and input named by a
`mock-tool: NAME {json}` line in the prompt, else the first tool and an input built from its
schema); the words after a tool result; a JSON document fitting the schema for structured
output; a thinking block first when Anthropic thinking is on. A tool call or JSON answer is
`count_text_tokens` of its text long (name + arguments for a tool call), thinking included.

Test hooks, by upstream model name (so they work through a proxy route) or per request:
  model contains "error-NNN"    HTTP NNN with the provider's error body, nothing produced
  model contains "timeout"      accept the request and never answer (until the client leaves)
  model contains "slow-stream"  100 tokens, 100 ms between stream chunks
  model contains "stream-error" an error event after half the output (HTTP 200 stream)
  chat `n`                      n choices, each of the reply's length; usage counts them all
  model contains "no-usage"     chat streams never send the usage chunk (old compatible servers)
  model contains "cached"       half the input is cache reads (Anthropic: plus a quarter cache
                                writes)
  model contains "reasoning"    half the output is reasoning / thinking tokens
  header x-mock-<name> or body metadata.mock_<name> (string or int), <name> one of:
    output-tokens, cached-tokens, cache-write-tokens, reasoning-tokens, chunk-delay-ms, error,
    stream-error-at (an error event once that many output tokens were streamed; 0: before any)
    (header spelling with dashes, metadata with underscores)

With `expected_key` set, `Authorization: Bearer <key>`, `x-api-key`, `api-key` or
`x-goog-api-key` must carry it,
otherwise 401: this proves a proxy sends the provider key, not the client's own key.
"""

from metering.mock.common import (
    CREATED,
    DEFAULT_OUTPUT_TOKENS,
    MODELS,
    SLOW_STREAM_DELAY_MS,
    SLOW_STREAM_TOKENS,
    WORDS,
    MockSettings,
    Plan,
)
from metering.mock.ledger import Record
from metering.mock.server import MockServer, MockUpstream, run, serve, start_in_thread

__all__ = [
    "CREATED",
    "DEFAULT_OUTPUT_TOKENS",
    "MODELS",
    "SLOW_STREAM_DELAY_MS",
    "SLOW_STREAM_TOKENS",
    "WORDS",
    "MockServer",
    "MockSettings",
    "MockUpstream",
    "Plan",
    "Record",
    "run",
    "serve",
    "start_in_thread",
]
