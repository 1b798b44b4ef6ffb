"""Agents that run tools: the run loop over a scripted upstream, built-in and MCP tools, handoffs,
actions, and what every transport shows of the steps."""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from httpx_sse import connect_sse

from tests.support.agent_plans import BILLING_PROMPT, PLANS, TRIAGE_PROMPT
from tests.support.server import running_parley
from tests.support.upstream import Upstream
from tests.support.ws import chat as ws_chat
from tests.support.ws import new_session, read_reply, socket, text_of, until_event

TUTOR_ACTIONS = [
    {"prefix": "Explain:", "template": "Explain this simply to a student: {text}"},
    {"prefix": "Translate to Urdu:", "template": "Translate the following text into Urdu: {text}"},
    {"prefix": "Summarize:", "template": "Summarize in three sentences: {text}"},
]


def _agents() -> list[dict[str, Any]]:
    return [
        {"name": "calc", "model": "agent-calc", "tools": ["calculator"]},
        {"name": "parallel", "model": "agent-parallel", "tools": ["calculator", "current_time"]},
        {"name": "triage", "model": "agent-handoff", "system_prompt": TRIAGE_PROMPT, "handoffs": ["billing"]},
        {"name": "billing", "model": "agent-handoff", "system_prompt": BILLING_PROMPT, "description": "billing"},
        {"name": "recover", "model": "agent-recover", "tools": ["files__*"], "tool_timeout_seconds": 1},
        {"name": "patient", "model": "agent-recover", "tools": ["files__*"], "tool_timeout_seconds": 60},
        {"name": "forever", "model": "agent-forever", "tools": ["calculator"], "max_steps": 3},
        {
            "name": "hurried",
            "model": "agent-recover",
            "tools": ["files__*"],
            "tool_timeout_seconds": 60,
            "run_timeout_seconds": 1,
        },
        {"name": "client", "model": "agent-client", "tools": ["calculator"]},
        {"name": "cut", "model": "agent-cut", "tools": ["calculator"]},
        {"name": "tutor", "model": "agent-echo", "system_prompt": "You are a tutor.", "actions": TUTOR_ACTIONS},
    ]


@pytest.fixture(scope="module")
def parley(upstream: Upstream) -> Iterator[str]:
    v1 = upstream.base_url + "/v1"
    models = [{"name": plan, "provider": "openai", "base_url": v1} for plan in PLANS]
    stdio = {"name": "files", "command": sys.executable, "args": ["-m", "tests.support.mcp_server", "stdio"]}
    with running_parley(models=models, agents=_agents(), mcp_servers=[stdio]) as url:
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/ready").json()["mcp_servers"]["files"]["state"] != "ready":
            assert time.monotonic() < deadline, "the MCP server did not connect"
            time.sleep(0.05)
        yield url


def chat(parley: str, agent: str, message: str) -> list[tuple[str, dict[str, Any]]]:
    with (
        httpx.Client(base_url=parley, timeout=30) as http,
        connect_sse(http, "POST", "/api/chat", json={"agent": agent, "message": message}) as source,
    ):
        assert source.response.status_code == 200
        return [(event.event, json.loads(event.data)) for event in source.iter_sse()]


def names(events: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [name for name, _ in events]


def text(events: list[tuple[str, dict[str, Any]]]) -> str:
    return "".join(data["text"] for name, data in events if name == "text_delta")


def only(events: list[tuple[str, dict[str, Any]]], kind: str) -> list[dict[str, Any]]:
    return [data for name, data in events if name == kind]


def test_a_tool_step_then_the_answer(parley: str, upstream: Upstream) -> None:
    events = chat(parley, "calc", "what is six times seven?")
    assert names(events)[0] == "message_start" and names(events)[-1] == "message_complete"
    calls = only(events, "tool_call_delta")
    assert calls[0]["name"] == "calculator" and calls[0]["id"] == "call_calculator_0"
    assert json.loads("".join(call["arguments"] for call in calls)) == {"expression": "6 * 7"}
    [result] = only(events, "tool_result")
    assert result == {
        "id": "call_calculator_0",
        "name": "calculator",
        "output": "42",
        "output_chars": 2,
        "error": None,
        "duration_ms": result["duration_ms"],
    }
    assert only(events, "step") == [{"step": 2}]
    assert text(events).strip() == "The answer is 42"
    assert only(events, "message_complete")[0]["finish_reason"] == "stop"
    assert names(events).index("tool_result") < names(events).index("step") < names(events).index("text_delta")
    # The model's second call carried the call and its result.
    second = upstream.find("six times seven")
    sent = [r for r in upstream.requests if r.last_user_text == second.last_user_text]
    assert len(sent) == 2
    tail = sent[1].body["messages"][-2:]
    assert tail[0]["role"] == "assistant" and tail[0]["tool_calls"][0]["function"]["name"] == "calculator"
    assert tail[1] == {"role": "tool", "content": "42", "tool_call_id": "call_calculator_0", "name": "calculator"}
    assert {tool["function"]["name"] for tool in sent[0].body["tools"]} == {"calculator"}


def test_parallel_calls_run_together_and_both_results_reach_the_model(parley: str, upstream: Upstream) -> None:
    events = chat(parley, "parallel", "sum and time, please")
    results = {result["name"]: result for result in only(events, "tool_result")}
    assert results["calculator"]["output"] == "4" and results["calculator"]["error"] is None
    assert results["current_time"]["output"].endswith(", UTC)") and results["current_time"]["error"] is None
    assert text(events).startswith("Results: ")
    sent = [r for r in upstream.requests if r.last_user_text == "sum and time, please"]
    assert len(sent) == 2
    assert sorted(m["content"] for m in sent[1].body["messages"] if m["role"] == "tool") == sorted(
        result["output"] for result in results.values()
    )


def test_a_handoff_continues_the_reply_under_the_other_agent(parley: str, upstream: Upstream) -> None:
    events = chat(parley, "triage", "my invoice question")
    assert only(events, "agent_handoff") == [{"from_agent": "triage", "to_agent": "billing"}]
    assert text(events).strip() == "Billing here: your invoice is paid."
    sent = [r for r in upstream.requests if r.last_user_text == "my invoice question"]
    assert [r.body["messages"][0]["content"] for r in sent] == [TRIAGE_PROMPT, BILLING_PROMPT]
    assert [t["function"]["name"] for t in sent[0].body["tools"]] == ["transfer_to_billing"]
    assert "tools" not in sent[1].body  # billing has no tools of its own


def test_a_failing_mcp_tool_is_told_to_the_model_which_recovers(parley: str) -> None:
    events = chat(parley, "recover", "fail {}")
    [result] = only(events, "tool_result")
    assert result["name"] == "files__fail" and "the disk is full" in result["error"]
    assert text(events).startswith("Recovered after: error:")
    assert only(events, "message_complete")[0]["finish_reason"] == "stop"


def test_a_tool_that_hangs_past_its_timeout_fails_and_the_run_goes_on(parley: str) -> None:
    started = time.monotonic()
    events = chat(parley, "recover", 'slow {"seconds": 30}')
    [result] = only(events, "tool_result")
    assert result["error"] == "the tool did not answer within 1 seconds"
    assert text(events).startswith("Recovered after:")
    assert time.monotonic() - started < 15


def test_arguments_that_are_not_json_become_a_tool_error(parley: str) -> None:
    events = chat(parley, "recover", 'add {"a": 1')
    [result] = only(events, "tool_result")
    assert "not valid JSON" in result["error"]
    assert only(events, "message_complete")[0]["finish_reason"] == "stop"


def test_a_loop_stops_at_max_steps(parley: str, upstream: Upstream) -> None:
    events = chat(parley, "forever", "loop forever")
    assert len(only(events, "tool_result")) == 3
    assert only(events, "message_complete")[0]["finish_reason"] == "max_steps"
    assert len([r for r in upstream.requests if r.last_user_text == "loop forever"]) == 3


def test_arguments_cut_by_the_token_limit_end_the_reply_with_length(parley: str) -> None:
    events = chat(parley, "cut", "cut me short")
    assert only(events, "tool_result") == []
    assert only(events, "message_complete")[0]["finish_reason"] == "length"


def test_the_tutor_actions_reach_the_model_as_templates_and_the_message_is_kept(
    parley: str, upstream: Upstream
) -> None:
    for action in TUTOR_ACTIONS:
        marker = f"photosynthesis {action['prefix']}"
        events = chat(parley, "tutor", f"{action['prefix']} {marker}")
        expected = action["template"].replace("{text}", marker)
        seen = upstream.find(expected)
        assert seen.body["messages"][0] == {"role": "system", "content": "You are a tutor."}
        assert seen.last_user_text == expected
        conversation = only(events, "message_start")[0]["conversation_id"]
        stored = httpx.get(f"{parley}/api/conversations/{conversation}").json()["messages"]
        assert stored[0]["content"] == f"{action['prefix']} {marker}"  # what the user typed


def test_the_openai_client_drives_an_agent_and_sees_only_the_answer(parley: str) -> None:
    client = openai.OpenAI(base_url=f"{parley}/v1", api_key="unused")
    assert "agent:calc" in {model.id for model in client.models.list()}
    reply = client.chat.completions.create(model="agent:calc", messages=[{"role": "user", "content": "6x7 via v1"}])
    assert reply.choices[0].message.content is not None
    assert reply.choices[0].message.content.strip() == "The answer is 42"
    assert reply.choices[0].message.tool_calls is None and reply.choices[0].finish_reason == "stop"
    chunks = list(
        client.chat.completions.create(
            model="agent:calc", messages=[{"role": "user", "content": "6x7 streamed"}], stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip() == "The answer is 42"
    assert all(not (c.choices and c.choices[0].delta.tool_calls) for c in chunks)


def test_v1_shows_the_steps_to_clients_that_ask(parley: str) -> None:
    client = openai.OpenAI(base_url=f"{parley}/v1", api_key="unused")
    stream = client.chat.completions.create(
        model="agent:calc",
        messages=[{"role": "user", "content": "6x7 with steps"}],
        stream=True,
        extra_body={"parley_steps": True},
    )
    steps = [chunk.model_extra["parley"] for chunk in stream if chunk.model_extra and "parley" in chunk.model_extra]
    kinds = [step["type"] for step in steps]
    assert kinds[0] == "tool_call_delta" and "tool_result" in kinds and "step" in kinds
    assert next(step for step in steps if step["type"] == "tool_result")["output"] == "42"


def test_a_client_declared_tool_ends_the_reply_for_the_client(parley: str) -> None:
    client = openai.OpenAI(base_url=f"{parley}/v1", api_key="unused")
    weather = {
        "type": "function",
        "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
    }
    reply = client.chat.completions.create(
        model="agent:client",
        messages=[{"role": "user", "content": "weather?"}],
        tools=[weather],  # type: ignore[list-item]
    )
    assert reply.choices[0].finish_reason == "tool_calls"
    [call] = reply.choices[0].message.tool_calls or []
    assert call.type == "function"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}


def test_an_agent_with_tools_on_a_model_without_them_is_refused(upstream: Upstream) -> None:
    agents = [{"name": "local", "model": "echo", "tools": ["calculator"]}]
    with running_parley(models=[{"name": "echo", "provider": "fake"}], agents=agents) as url:
        response = httpx.post(f"{url}/api/chat", json={"agent": "local", "message": "hi"})
    assert response.status_code == 400
    assert "does not support tools" in response.json()["error"]["message"]


def test_unknown_handoff_targets_are_refused_at_start() -> None:
    from parley.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match="hands off to unknown agents: nobody"):
        load_settings(agents=[{"name": "a", "handoffs": ["nobody"]}])


def test_the_websocket_shows_the_steps_and_a_cancel_stops_a_running_tool(parley: str) -> None:
    with socket(parley, new_session()) as ws:
        frames = ws_chat(ws, "what is six times seven, over a socket?", agent="calc")
        kinds = [frame["event"] for frame in frames]
        assert {"tool_call_delta", "tool_result", "step"} <= set(kinds)
        assert text_of(frames).strip() == "The answer is 42"
        ws.send(json.dumps({"message": 'slow {"seconds": 30}', "agent": "patient"}))
        until_event(ws, "tool_call_delta")
        started = time.monotonic()
        ws.send(json.dumps({"type": "cancel"}))
        rest = read_reply(ws)
        assert rest[-1]["event"] == "message_complete" and rest[-1]["data"]["finish_reason"] == "cancelled"
        assert time.monotonic() - started < 5
        assert all(frame["event"] != "tool_result" for frame in rest)
        # The session (and the MCP server) go on serving.
        assert text_of(ws_chat(ws, 'add {"a": 2, "b": 3}', agent="recover")) == "Recovered after: 5 "


def test_the_tutor_example_config_sends_its_actions_to_the_model(upstream: Upstream, tmp_path: Path) -> None:
    from parley.config import load_settings

    example = Path(__file__).resolve().parent.parent / "examples" / "tutor.toml"
    v1 = upstream.base_url + "/v1"
    model = {"name": "agent-echo", "provider": "openai", "base_url": v1}
    settings = load_settings(example, models=[model], data_dir=tmp_path)
    [tutor] = [agent for agent in settings.agents if agent.name == "tutor"]
    assert [action.prefix for action in tutor.actions] == ["Explain:", "Translate to Urdu:", "Summarize:"]
    with running_parley(settings) as url:
        for action in tutor.actions:
            marker = f"example {uuid.uuid4().hex}"
            body = {"type": "user_message", "message": {"id": marker, "content": f"{action.prefix} {marker}"}}
            with httpx.Client(base_url=url, timeout=30) as http, http.stream("POST", "/chatkit/api", json=body) as r:
                assert r.status_code == 200
                r.read()
            seen = upstream.find(marker)
            assert seen.last_user_text == action.template.replace("{text}", marker)
            assert seen.body["messages"][0]["content"] == tutor.system_prompt


def test_the_agents_example_config_is_valid() -> None:
    from parley.config import load_settings

    settings = load_settings(Path(__file__).resolve().parent.parent / "examples" / "agents.toml")
    assert {agent.name for agent in settings.agents} >= {"assistant", "billing"}
    assert [server.name for server in settings.mcp_servers] == ["files"]


def test_the_conversation_keeps_the_steps_and_the_model_sees_them_next_turn(parley: str, upstream: Upstream) -> None:
    events = chat(parley, "calc", "six sevens, kept")
    conversation = only(events, "message_start")[0]["conversation_id"]
    stored = httpx.get(f"{parley}/api/conversations/{conversation}").json()["messages"]
    user, reply = stored
    assert (user["role"], reply["role"], reply["agent"]) == ("user", "assistant", "calc")
    assert reply["content"].strip() == "The answer is 42"
    call, result = reply["steps"]
    assert call["role"] == "assistant" and call["tool_calls"][0]["function"]["name"] == "calculator"
    assert result == {"role": "tool", "content": "42", "tool_call_id": "call_calculator_0", "name": "calculator"}
    exported = httpx.get(f"{parley}/api/conversations/{conversation}/export?format=markdown").text
    assert "**Tool call** `calculator`" in exported and "**Tool result** (`call_calculator_0`)" in exported
    # The next turn's model sees the call and its result before the answer, in order.
    with httpx.Client(base_url=parley, timeout=30) as http:
        body = {"agent": "calc", "message": "and again?", "conversation_id": conversation}
        assert http.post("/api/chat", json={**body, "stream": False}).status_code == 200
    history = upstream.find("and again?").body["messages"]
    assert [m["role"] for m in history] == ["user", "assistant", "tool", "assistant", "user"]


def test_the_conversation_remembers_which_agent_answered(parley: str) -> None:
    events = chat(parley, "triage", "an invoice question to remember")
    conversation = only(events, "message_start")[0]["conversation_id"]
    reply = httpx.get(f"{parley}/api/conversations/{conversation}").json()["messages"][1]
    assert reply["agent"] == "billing"
    assert reply["steps"][0]["tool_calls"][0]["function"]["name"] == "transfer_to_billing"


def test_parley_mcp_lists_and_refreshes_a_running_servers_mcp_servers(parley: str) -> None:
    from tests.support.process import run_parley

    refreshed = httpx.post(f"{parley}/api/admin/mcp/refresh", timeout=30)
    assert refreshed.status_code == 200
    [files] = refreshed.json()
    assert files["name"] == "files" and files["state"] == "ready" and "files__add" in files["tools"]
    shown = run_parley("mcp", "refresh", "--url", parley)
    assert shown.returncode == 0, shown.stderr
    assert "files" in shown.stdout and "ready" in shown.stdout and "files__add" in shown.stdout
    listed = run_parley("mcp", "list", "--url", parley)
    assert listed.returncode == 0 and "files__slow" in listed.stdout


def test_a_reply_past_the_agents_time_limit_ends_with_an_error_event(parley: str) -> None:
    started = time.monotonic()
    events = chat(parley, "hurried", 'slow {"seconds": 30}')
    assert names(events)[-1] == "error"
    assert only(events, "error")[0]["code"] == "agent_time_limit"
    assert time.monotonic() - started < 10
    conversation = only(events, "message_start")[0]["conversation_id"]
    reply = httpx.get(f"{parley}/api/conversations/{conversation}").json()["messages"][1]
    assert reply["status"] == "failed" and "time limit of 1 seconds" in reply["error"]
