"""The Claude Code, Codex and Gemini CLIs, installed by scripts/install-clients.sh, through the
proxy.

Each runs with a throwaway HOME (Codex: a CODEX_HOME whose model provider is the proxy; the
Gemini CLI: a settings file choosing API-key auth, GOOGLE_GEMINI_BASE_URL the proxy), no
network but the proxy, telemetry and updates off; each finishes one prompt and every call it
made is a record equal to the mock's ledger.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from decimal import Decimal
from pathlib import Path

import anthropic
import pytest
from django.utils import timezone

from metering.models import ModelPrice, ModelRoute, Upstream
from tests.clients.conftest import assert_records_match_ledger, cli, isolated_env, mock_requests
from tests.e2e.conftest import World

pytestmark = pytest.mark.e2e
TIMEOUT = 180


def _claude(world: World, tmp_path: Path, prompt: str, *args: str) -> subprocess.CompletedProcess:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = isolated_env(home, ANTHROPIC_BASE_URL=world.proxy, ANTHROPIC_API_KEY=world.key)
    return subprocess.run(
        [cli("claude"), "-p", prompt, *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
    )


def test_claude_code_default_model_with_a_tool_round_trip(
    client_world: World, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("The meeting is on Tuesday.\n")
    prompt = f'What does notes.txt say? mock-tool: Read {{"file_path": "{notes}"}}'
    done = _claude(client_world, tmp_path, prompt)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "the quick brown fox" in done.stdout
    calls = [r for r in mock_requests(client_world) if r["path"].endswith("/messages")]
    assert len(calls) >= 2
    # The first call asked for the tool, the next handed its result back (the file's text).
    first, second = calls[0]["body"], calls[1]["body"]
    assert first["model"] == "claude-opus-5-5"  # Claude Code's own default, routed
    assert any(t["name"] == "Read" for t in first["tools"])
    results = [
        block
        for block in second["messages"][-1]["content"]
        if isinstance(block, dict) and block.get("type") == "tool_result"
    ]
    assert results and "Tuesday" in json.dumps(results)
    records = assert_records_match_ledger(client_world, at_least=2)
    assert {r.model for r in records} == {"claude-opus-5-5"}
    assert all(r.cost > 0 for r in records)


def test_token_counting_is_answered_and_never_billed(client_world: World) -> None:
    client = anthropic.Anthropic(
        base_url=client_world.proxy, api_key=client_world.key, max_retries=0
    )
    counted = client.messages.count_tokens(
        model="claude-opus-5-5", messages=[{"role": "user", "content": "Count me."}]
    )
    assert counted.input_tokens > 0
    assert_records_match_ledger(client_world, at_least=0)


def _codex(world: World, tmp_path: Path, prompt: str, *args: str) -> subprocess.CompletedProcess:
    home = tmp_path / "codex-home"
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text(
        "\n".join(
            [
                'model_provider = "tokenbudget"',
                "[model_providers.tokenbudget]",
                'name = "Tokenbudget"',
                f'base_url = "{world.proxy}/v1"',
                'env_key = "TOKENBUDGET_KEY"',
                'wire_api = "responses"',
                "[analytics]",
                "enabled = false",
                "[otel]",
                'exporter = "none"',
                "",
            ]
        )
    )
    env = isolated_env(home, CODEX_HOME=str(home), TOKENBUDGET_KEY=world.key)
    return subprocess.run(
        [cli("codex"), "exec", "--skip-git-repo-check", *args, prompt],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
    )


def test_codex_exec_default_model(client_world: World, tmp_path: Path) -> None:
    done = _codex(client_world, tmp_path, "Say hello.")
    assert done.returncode == 0, done.stderr + done.stdout
    assert "the quick brown fox" in done.stdout
    calls = [r for r in mock_requests(client_world) if r["path"].endswith("/responses")]
    assert calls and {c["body"]["model"] for c in calls} == {"gpt-6.2-sol"}  # Codex's default
    records = assert_records_match_ledger(client_world)
    assert {r.model for r in records} == {"gpt-6.2-sol"}


def test_codex_exec_with_a_tool_round_trip(client_world: World, tmp_path: Path) -> None:
    # gpt-5-codex is an alias of the gpt-6.2-sol route; Codex offers its tools to that name.
    (tmp_path / "hello.txt").write_text("hi\n")
    prompt = 'List the files. mock-tool: exec_command {"cmd": "ls"}'
    done = _codex(client_world, tmp_path, prompt, "-m", "gpt-5-codex")
    assert done.returncode == 0, done.stderr + done.stdout
    calls = [r["body"] for r in mock_requests(client_world) if r["path"].endswith("/responses")]
    assert len(calls) >= 2
    assert "exec_command" in {t.get("name") for t in calls[0]["tools"]}
    outputs = [
        i
        for i in calls[1]["input"]
        if isinstance(i, dict) and i.get("type", "").endswith("call_output")
    ]
    assert outputs and "hello.txt" in str(outputs[-1]["output"]), calls[1]["input"][-3:]
    records = assert_records_match_ledger(client_world, at_least=2)
    assert {r.model for r in records} == {"gpt-6.2-sol"}  # recorded under the route's name


# --- the Gemini CLI ----------------------------------------------------------------------------

GEMINI_MODEL = "gemini-2.5-flash"
GEMINI_SETTINGS = {
    "security": {"auth": {"selectedType": "gemini-api-key"}},
    "privacy": {"usageStatisticsEnabled": False},
    "telemetry": {"enabled": False},
    "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False},
}


@pytest.fixture
def gemini_cli_world(client_world: World) -> World:
    upstream = Upstream.objects.create(
        name="mock-gemini",
        kind="gemini",
        base_url=client_world.mock,
        read_timeout=Decimal(3),
        credential_env="TB_UPSTREAM_KEY_TEST",
    )
    ModelRoute.objects.create(
        public_name=GEMINI_MODEL,
        upstream=upstream,
        upstream_model=GEMINI_MODEL,
        default_max_output_tokens=256,
    )
    ModelPrice.objects.create(
        model=GEMINI_MODEL,
        input_per_mtok=Decimal("0.30"),
        output_per_mtok=Decimal("2.50"),
        cached_input_per_mtok=Decimal("0.03"),
        effective_from=timezone.now() - dt.timedelta(days=30),
        source="catalog",
    )
    return client_world


def _gemini(world: World, tmp_path: Path, prompt: str) -> subprocess.CompletedProcess:
    home = tmp_path / "gemini-home"
    (home / ".gemini").mkdir(parents=True, exist_ok=True)
    (home / ".gemini" / "settings.json").write_text(json.dumps(GEMINI_SETTINGS))
    env = isolated_env(
        home,
        GEMINI_API_KEY=world.key,
        GOOGLE_GEMINI_BASE_URL=world.proxy,
        GEMINI_TELEMETRY_ENABLED="false",
        GEMINI_CLI_TRUST_WORKSPACE="true",  # headless runs ask for a trusted folder
    )
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return subprocess.run(
        [cli("gemini"), "-m", GEMINI_MODEL, "-p", prompt],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
    )


def test_gemini_cli_prompt(gemini_cli_world: World, tmp_path: Path) -> None:
    done = _gemini(gemini_cli_world, tmp_path, "Say hello.")
    assert done.returncode == 0, done.stderr + done.stdout
    assert "the quick brown fox" in done.stdout
    calls = mock_requests(gemini_cli_world)
    assert calls and {c["path"] for c in calls} == {
        f"/v1beta/models/{GEMINI_MODEL}:streamGenerateContent"
    }
    assert all(c["headers"]["x-goog-api-key"] != gemini_cli_world.key for c in calls)
    records = assert_records_match_ledger(gemini_cli_world)
    assert {(r.model, r.provider, r.endpoint, r.streamed) for r in records} == {
        (GEMINI_MODEL, "gemini", "generate_content", True)
    }
    assert all(r.cost > 0 for r in records)


def test_gemini_cli_with_a_tool_round_trip(gemini_cli_world: World, tmp_path: Path) -> None:
    notes = tmp_path / "work" / "notes.txt"
    notes.parent.mkdir(parents=True, exist_ok=True)
    notes.write_text("The meeting is on Tuesday.\n")
    prompt = f'What does notes.txt say? mock-tool: read_file {{"file_path": "{notes}"}}'
    done = _gemini(gemini_cli_world, tmp_path, prompt)
    assert done.returncode == 0, done.stderr + done.stdout
    calls = [r["body"] for r in mock_requests(gemini_cli_world)]
    assert len(calls) >= 2
    offered = {
        d["name"] for tool in calls[0]["tools"] for d in tool.get("functionDeclarations", [])
    }
    assert "read_file" in offered
    responses = [
        part["functionResponse"]
        for part in calls[1]["contents"][-1]["parts"]
        if "functionResponse" in part
    ]
    assert responses and "Tuesday" in json.dumps(responses)
    records = assert_records_match_ledger(gemini_cli_world, at_least=2)
    assert {r.model for r in records} == {GEMINI_MODEL}
