"""Replay understands route, plan and model limits (issue 18 item 6): the trace's path
(matched against the policy's route templates) and its optional ``plan`` field."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from abuseguard.cli import main
from abuseguard.path_templates import PathTemplates
from abuseguard.policy import Limits, Policy, TokenBucket
from abuseguard.traces import TRACE_FIELD_WRITERS, TraceError, parse_line, trace_fields, trace_line

POLICY_MODULE = """
from abuseguard import Limits, Policy, TokenBucket

SLOW = "1/hour"
POLICY = Policy(
    network=None,
    scoring=None,
    unverified_keys=None,
    bucket=TokenBucket(SLOW, burst=100),
    routes={
        "GET /v1/models/{model}": Limits(bucket=TokenBucket(SLOW, burst=4)),
        "POST /v1/chat/completions": Limits(
            models={"gpt-big": Limits(bucket=TokenBucket(SLOW, burst=1))}
        ),
    },
    plans={
        "free": Limits(bucket=TokenBucket(SLOW, burst=2)),
        "pro": Limits(bucket=TokenBucket(SLOW, burst=50)),
    },
    plan_func=lambda conn: conn.user.username,  # the middleware's; replay reads the trace
)
"""


def line(ts: float, actor: str, path: str, plan: str | None = None, **extra: Any) -> str:
    fields: dict[str, Any] = {"ts": ts, "ip": "10.0.0.1", "key": f"sk-{actor}", "path": path}
    fields.update(extra)
    if plan is not None:
        fields["plan"] = plan
    fields["actor"] = actor
    return trace_line(trace_fields(**fields))


def replay(tmp_path: Path, lines: list[str], capsys: pytest.CaptureFixture[str]) -> Any:
    (tmp_path / "tiers.py").write_text(textwrap.dedent(POLICY_MODULE))
    trace = tmp_path / "trace.jsonl"
    trace.write_text("\n".join(lines) + "\n")
    code = main(
        [
            "replay",
            str(trace),
            "--policy",
            f"{tmp_path}/tiers.py:POLICY",
            "--format",
            "json",
            "--no-progress",
        ]
    )
    assert code == 0
    return json.loads(capsys.readouterr().out)


def test_replay_applies_plan_limits_from_the_traces_plan_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [
        line(1000 + i, actor, "/v1/models", plan)
        for i in range(5)
        for actor, plan in (("free", "free"), ("pro", "pro"), ("none", None))
    ]
    report = replay(tmp_path, lines, capsys)
    limited = {actor: stats["limited"] for actor, stats in report["actors"].items()}
    assert limited == {"free": 3, "pro": 0, "none": 0}


def test_replay_matches_logged_paths_to_route_templates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # five different models under one template share its bucket of 4
    lines = [line(1000 + i, "pro", f"/v1/models/m{i}", "pro") for i in range(5)]
    report = replay(tmp_path, lines, capsys)
    assert report["actors"]["pro"]["limited"] == 1


def test_replay_applies_model_limits_from_the_logged_body(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = json.dumps({"messages": [], "model": "gpt-big"})
    lines = [
        line(1000 + i, "pro", "/v1/chat/completions", "pro", method="POST", body=body)
        for i in range(3)
    ]
    report = replay(tmp_path, lines, capsys)
    assert report["actors"]["pro"]["limited"] == 2


def test_the_plan_field_is_written_and_read_and_checked() -> None:
    assert "plan" in TRACE_FIELD_WRITERS
    record = parse_line(line(1.0, "a", "/", "pro"))
    assert record.info.plan == "pro"
    assert parse_line('{"ts": 1, "ip": "a"}').info.plan is None
    with pytest.raises(TraceError) as bad:
        parse_line('{"ts": 1, "ip": "a", "plan": 3}')
    assert (bad.value.reason, bad.value.detail) == ("bad_type", "plan")


def test_the_schema_documents_the_plan_field() -> None:
    from importlib.resources import files

    schema = json.loads(files("abuseguard").joinpath("schemas/trace.schema.json").read_text())
    assert schema["properties"]["plan"]["$ref"] == "#/$defs/optional_string"


@pytest.mark.parametrize(
    ("path", "template"),
    [
        ("/v1/models", "/v1/models"),
        ("/v1/models/gpt-x", "/v1/models/{model}"),
        ("/v1/models/gpt-x/versions", None),
        ("/files/7", "/files/{id:int}"),
        ("/files/seven", "/files/{name}"),
        ("/static/css/a.css", "/static/{rest:path}"),
        ("/v1/models/", None),
        ("/elsewhere", None),
    ],
)
def test_path_templates_follow_starlettes_converters(path: str, template: str | None) -> None:
    policy = Policy(
        routes={
            "/v1/models": Limits(concurrency=1),
            "GET /v1/models/{model}": Limits(concurrency=1),
            "/files/{name}": Limits(concurrency=1),
            "/static/{rest:path}": Limits(concurrency=1),
        },
        plans={"pro": Limits(routes={"/files/{id:int}": Limits(concurrency=1)})},
        plan_func=lambda conn: None,
    )
    templates = PathTemplates.of_policy(policy)
    assert templates is not None
    assert templates.template(path) == template


def test_no_templates_without_path_parameters() -> None:
    assert PathTemplates.of_policy(Policy()) is None
    literal = Policy(bucket=TokenBucket("1/second", cost={"POST /v1/chat": 3}))
    assert PathTemplates.of_policy(literal) is None
