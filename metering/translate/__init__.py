"""Pure translation between the OpenAI chat and Anthropic messages protocols (no I/O).

- `openai_to_anthropic`: an OpenAI chat request for a model routed to Anthropic, and the
  Anthropic answer back in chat shape.
- `anthropic_to_openai`: an Anthropic messages request for a model routed to an OpenAI-kind
  upstream, and the chat answer back in messages shape.
- `streams`: the same for streams, one upstream event in, the client's SSE frames out.
- `usage`: usage objects mapped between the two, token kind by token kind, so the normalised
  `Usage` of the translated object equals the upstream's.
- `limits`: limits that must stay below a clamped output limit.

Written here rather than taken from litellm's adapters: litellm is a large dependency (import
alone takes seconds and pulls in dozens of packages) and builds pydantic objects per call,
where these functions are plain dict walks measured in microseconds (bench/translate.py).
"""

from metering.translate.errors import TranslationError

__all__ = ["TranslationError"]
