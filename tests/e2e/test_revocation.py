"""A revoked key stops working on a running proxy (with its caches on) within 5 seconds."""

from __future__ import annotations

import time

import openai
import pytest
from django.db import connection

from metering.models import VirtualKey
from metering.services import key_revoke
from tests import servers
from tests.e2e.conftest import make_world

pytestmark = pytest.mark.e2e
REVOCATION_BOUND_SECONDS = 5


def test_revocation_reaches_a_caching_proxy_within_five_seconds(
    transactional_db, mock_upstream_url: str
) -> None:
    port = servers.free_port()
    process = servers.start_proxy(
        port,
        {
            "DATABASE_URL": servers.database_url_of(connection.settings_dict),
            "TB_KEY_CACHE_SECONDS": "4",  # the longest cache lifetime the settings allow
            "TB_SERVE_STATIC": "0",
        },
    )
    try:
        world = make_world(f"http://127.0.0.1:{port}", mock_upstream_url)
        client = openai.OpenAI(
            base_url=f"{world.proxy}/v1", api_key=world.key, max_retries=0, timeout=10
        )
        messages = [{"role": "user", "content": "hi"}]
        client.chat.completions.create(
            model="gpt-4o-mini", messages=messages, max_tokens=5
        )  # cached now
        key_revoke(key=VirtualKey.objects.get(), actor=None)
        revoked_at = time.monotonic()
        while True:
            try:
                client.chat.completions.create(model="gpt-4o-mini", messages=messages, max_tokens=5)
            except openai.AuthenticationError:
                break
            assert time.monotonic() - revoked_at < REVOCATION_BOUND_SECONDS + 1, (
                "revoked key still served"
            )
            time.sleep(0.2)
    finally:
        servers.stop(process)
