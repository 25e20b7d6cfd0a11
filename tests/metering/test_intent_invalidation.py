"""`auto:<intent>` routing reads a per-process intent cache: every change to an intent's
models tells every proxy process to drop the entry."""

from __future__ import annotations

from typing import Any

import pytest

from metering import cache, routing
from metering.outcomes import intent_save
from tests.metering.test_invalidation import channel, received  # noqa: F401 (fixture)


def test_the_intent_cache_answers_to_its_name() -> None:
    assert cache._caches["intents"] is routing.intents


@pytest.mark.django_db(transaction=True)
def test_saving_or_renaming_an_intent_publishes_its_names(channel: Any) -> None:  # noqa: F811
    intent = intent_save(name="support")
    assert received(channel) == [{"cache": "intents", "entry": "support"}]
    intent_save(name="helpdesk", instance=intent)
    assert sorted(m["entry"] for m in received(channel)) == ["helpdesk", "support"]
