"""Replay: completion order and statuses, cost modes, end to end, and CLI errors."""

from __future__ import annotations

import gzip
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from abuseguard.cli import main
from abuseguard.decision import Action, Decision
from abuseguard.policy import Policy, TokenBucket
from abuseguard.replay import BATCH, content_prefetch, resolve_cost_mode, run_replay
from abuseguard.report import ReportBuilder
from abuseguard.request import RequestInfo
from abuseguard.traces import TraceReader, parse_line

ALLOW = Decision(Action.ALLOW, (), 0.0)
BLOCK = Decision(Action.BLOCK, ("cadence",), 0.9)
THROTTLE = Decision(Action.THROTTLE, ("rate",), 0.1)
CHALLENGE = Decision(Action.CHALLENGE, ("persona",), 0.7)
DEGRADE = Decision(Action.DEGRADE, ("template",), 0.6)
SHADOW = Decision(Action.BLOCK, ("fan_in",), 0.9, shadow=True)


class ScriptedGuard:
    """Answers from a script keyed by the request's key; records every call."""

    def __init__(self, script: dict[str, Decision], policy: Any = None) -> None:
        self.script = script
        self.policy = policy
        self.inflight = 0
        self.calls: list[tuple[Any, ...]] = []

    def check(self, info: RequestInfo) -> Decision:
        self.calls.append(("check", info.ts, info.key, info.cost, self.inflight))
        return self.script.get(info.key or "", ALLOW)

    def complete(
        self,
        info: RequestInfo,
        decision: Decision,
        *,
        status: int | None = None,
        cost: float | None = None,
    ) -> None:
        self.calls.append(("complete", info.ts, info.key, status, cost))


def _records(*lines: dict[str, Any]) -> list[Any]:
    return [parse_line(json.dumps(line), i + 1) for i, line in enumerate(lines)]


def test_served_requests_complete_after_their_duration_refused_at_once() -> None:
    guard = ScriptedGuard({"b": BLOCK, "t": THROTTLE, "c": CHALLENGE, "s": SHADOW, "d": DEGRADE})
    records = _records(
        {"ts": 0, "ip": "a", "key": "a", "status": 200, "cost": 9, "duration": 5},
        {"ts": 1, "ip": "a", "key": "b", "status": 200, "cost": 9, "duration": 5},
        {"ts": 2, "ip": "a", "key": "t", "status": 200},
        {"ts": 3, "ip": "a", "key": "c", "status": 200},
        {"ts": 4, "ip": "a", "key": "s", "status": 500, "duration": 0.5},
        {"ts": 4.2, "ip": "a", "key": "d", "status": 200},
        {"ts": 6, "ip": "a", "key": "late", "status": 201, "duration": 1},
    )
    timing = run_replay(records, guard, ReportBuilder(), cost_mode="ignore")
    assert timing.records == 7
    completes = [(c[2], c[3], c[4]) for c in guard.calls if c[0] == "complete"]
    assert completes == [
        ("b", 403, None),  # refused: the guard's own answer, at once
        ("t", 429, None),
        ("c", 429, None),  # the built-in challenge answers as the throttle does
        ("d", 200, None),  # degraded requests are served
        ("s", 500, None),  # shadow: served, completes at ts + duration (4.5)
        ("a", 200, None),  # at ts 5, before the request at ts 6 is checked
        ("late", 201, None),  # flushed at the end
    ]
    order = [(c[0], c[2]) for c in guard.calls]
    assert order.index(("complete", "a")) < order.index(("check", "late"))
    # in-flight load: requests with a duration that were still open
    inflight = {c[2]: c[4] for c in guard.calls if c[0] == "check"}
    assert inflight["b"] == 1 and inflight["s"] == 1 and inflight["late"] == 0


def test_cost_modes() -> None:
    line = {"ts": 0, "ip": "a", "key": "k", "status": 200, "cost": 1234}
    for mode, upfront, after in (
        ("after", None, 1234.0),
        ("upfront", 1234.0, None),
        ("ignore", None, None),
    ):
        guard = ScriptedGuard({})
        run_replay(_records(line), guard, ReportBuilder(), cost_mode=mode)
        assert guard.calls[0][3] == upfront, mode
        assert guard.calls[1][4] == after, mode
    plain = ScriptedGuard({}, policy=Policy())
    assert resolve_cost_mode(plain, "auto") == "ignore"
    tokens = ScriptedGuard({}, policy=Policy(bucket=TokenBucket("1000/second", cost_header="x-c")))
    assert resolve_cost_mode(tokens, "auto") == "after"
    with pytest.raises(ValueError, match="cost mode"):
        resolve_cost_mode(plain, "sometimes")


def test_limit_and_progress() -> None:
    records = _records(*({"ts": i, "ip": "a"} for i in range(20)))
    seen: list[int] = []
    builder = ReportBuilder()
    timing = run_replay(records, ScriptedGuard({}), builder, limit=5, on_progress=seen.append)
    assert timing.records == 5
    assert builder.build()["requests"] == 5
    assert seen[-1] == 5


def test_limit_reads_only_the_records_it_replays() -> None:
    records = iter(_records(*({"ts": i, "ip": "a"} for i in range(BATCH + 40))))
    timing = run_replay(records, ScriptedGuard({}), ReportBuilder(), limit=BATCH + 3)
    assert timing.records == BATCH + 3
    assert len(list(records)) == 37


def test_unlabeled_records_group_by_key_then_ip() -> None:
    records = _records(
        {"ts": 0, "ip": "198.51.100.1", "key": "k1"}, {"ts": 1, "ip": "198.51.100.2"}
    )
    builder = ReportBuilder()
    run_replay(records, ScriptedGuard({}), builder)
    report = builder.build()
    assert set(report["actors"]) == {"k1", "198.51.100.2"}
    assert report["labels"]["unknown"]["requests"] == 2


# --- end to end with the real Guard and the CLI ----------------------------------------------


@pytest.fixture(scope="module")
def small_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("replay") / "small.jsonl"
    code = main(
        ["simulate", "-o", str(path), "--seed", "5", "--hours", "0.5", "--scale", "0.08", "-q"]
    )
    assert code == 0
    return path


def _replay_json(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    code = main(["replay", *args, "--format", "json", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    result: dict[str, Any] = json.loads(out)
    return result


def test_simulate_then_replay_end_to_end(
    small_trace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = _replay_json([str(small_trace)], capsys)
    with TraceReader(small_trace) as reader:
        lines = sum(1 for _ in reader)
    for key in ("requests", "malformed_lines", "decisions_per_second", "labels", "kinds"):
        assert key in report
    assert report["requests"] == lines
    assert report["malformed_lines"] == 0
    assert report["decisions_per_second"] > 0
    assert set(report["labels"]) == {"benign", "abusive"}
    for name, group in [*report["labels"].items(), *report["kinds"].items()]:
        for key in (
            "actors",
            "actors_mitigated",
            "requests",
            "allowed",
            "limited",
            "mitigated",
            "leakage",
        ):
            assert key in group, (name, key)
        assert group["allowed"] + group["limited"] + group["mitigated"] == group["requests"]
    assert sum(g["requests"] for g in report["labels"].values()) == report["requests"]
    assert sum(k["requests"] for k in report["kinds"].values()) == report["requests"]
    assert {k["label"] for k in report["kinds"].values()} == {"benign", "abusive"}
    assert len(report["actors"]) == sum(g["actors"] for g in report["labels"].values())


def test_replay_gzip_limit_table_and_plot(
    small_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    packed = tmp_path / "small.jsonl.gz"
    packed.write_bytes(gzip.compress(small_trace.read_bytes()))
    report = _replay_json([str(packed), "--limit", "50"], capsys)
    assert report["requests"] == 50
    plot = tmp_path / "plot.png"
    out = tmp_path / "table.txt"
    code = main(["replay", str(small_trace), "--no-progress", "--plot", str(plot), "-o", str(out)])
    assert code == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "abuseguard replay:" in out.read_text()


def test_replay_counts_malformed_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "bad.jsonl"
    trace.write_text(
        '{"ts": 1, "ip": "192.0.2.1"}\nnot json\n{"ts": 2}\n{"ts": 3, "ip": "192.0.2.1"}\n'
    )
    report = _replay_json([str(trace)], capsys)
    assert report["requests"] == 2
    assert report["malformed_lines"] == 2
    assert report["trace"]["malformed_line_numbers"] == [2, 3]
    assert report["trace"]["malformed_reasons"] == {"bad_json": 1, "missing": 1}


def test_policy_from_module_and_file(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    small_trace: Path,
) -> None:
    (tmp_path / "my_policies.py").write_text(
        textwrap.dedent(
            """
            from abuseguard import Policy, TokenBucket
            STRICT = Policy(bucket=TokenBucket("1/minute", burst=1))
            def make():
                return Policy(bucket=TokenBucket("1/minute", burst=1))
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    by_attr = _replay_json([str(small_trace), "--policy", "my_policies:STRICT"], capsys)
    by_call = _replay_json([str(small_trace), "--policy", "my_policies:make"], capsys)
    by_file = _replay_json(
        [str(small_trace), "--policy", f"{tmp_path}/my_policies.py:STRICT"], capsys
    )
    for report in (by_attr, by_call, by_file):
        assert report["labels"]["abusive"]["limited"] + report["labels"]["benign"]["limited"] > 0
    assert by_attr["policy"] == "my_policies:STRICT"


def test_missing_trace_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(tmp_path / "absent.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "trace not found" in err and "Traceback" not in err
    assert main(["replay", str(tmp_path)]) == 2
    assert "directory" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon_here", "must look like module:attribute"),
        ("abuseguard_no_such_module:POLICY", "cannot import"),
        ("abuseguard.policy:NO_SUCH_ATTR", "has no attribute"),
        ("abuseguard.policy:ConfigError", "calling it failed"),
        ("json:dumps", "calling it failed"),
        ("abuseguard.replay:UNKNOWN_LABEL", "expected a Policy"),
        ("/nonexistent/dir/p.py:POLICY", "no such file"),
        ("broken_policy_mod:POLICY", "importing 'broken_policy_mod' failed"),
    ],
)
def test_bad_policy_is_a_clear_error(
    spec: str,
    message: str,
    small_trace: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "broken_policy_mod.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["replay", str(small_trace), "--policy", spec, "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert "Traceback" not in captured.err
    assert captured.out == ""


def test_bad_options_exit_with_usage(small_trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for args in (["--limit", "0"], ["--limit", "x"], ["--format", "xml"], ["--cost", "maybe"]):
        with pytest.raises(SystemExit) as caught:
            main(["replay", str(small_trace), *args])
        assert caught.value.code == 2
    capsys.readouterr()


def test_replay_with_simulated_mmdb_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("mmdb_writer")
    trace, mmdb = tmp_path / "bare.jsonl", tmp_path / "mmdb"
    code = main(
        [
            "simulate",
            "-o",
            str(trace),
            "--seed",
            "6",
            "--hours",
            "0.5",
            "--scale",
            "0.1",
            "--only",
            "tor,browser_chat",
            "--no-enrichment",
            "--mmdb-dir",
            str(mmdb),
            "-q",
        ]
    )
    assert code == 0
    bare = _replay_json([str(trace)], capsys)
    with_intel = _replay_json([str(trace), "--mmdb-dir", str(mmdb)], capsys)
    assert with_intel["requests"] == bare["requests"]
    # the databases tell the guard the exits are Tor: the scores must rise
    assert with_intel["kinds"]["tor"]["score"]["mean"] > bare["kinds"]["tor"]["score"]["mean"]


def test_bad_mmdb_dir_is_a_clear_error(
    small_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["replay", str(small_trace), "--mmdb-dir", str(tmp_path / "none")]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert main(["replay", str(small_trace), "--mmdb-dir", str(tmp_path)]) == 2
    assert "no MaxMind databases" in capsys.readouterr().err
    (tmp_path / "junk.mmdb").write_bytes(b"not a database")
    assert main(["replay", str(small_trace), "--mmdb-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "cannot read" in err and "Traceback" not in err


class _NoPrime:
    """A fingerprinter without the batch entry point: the guard fingerprints one by one."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0

    def fingerprint(self, body: Any, content_type: str | None = None) -> Any:
        self.calls += 1
        return self.inner.fingerprint(body, content_type)


def test_batch_fingerprinting_changes_no_decision(small_trace: Path) -> None:
    from abuseguard.guard import Guard

    reports = []
    for primed in (True, False):
        guard = Guard(Policy())
        assert guard.content is not None
        if not primed:
            guard.content = _NoPrime(guard.content)
        assert (content_prefetch(guard) is not None) == primed
        builder = ReportBuilder()
        with TraceReader(small_trace) as reader:
            timing = run_replay(reader, guard, builder)
        assert timing.records > 2 * BATCH
        if primed:
            assert not guard.content._primed  # every primed fingerprint was asked for
        reports.append(builder.build())
    assert reports[0] == reports[1]


class _OneByOne:
    """A Guard seen only through check and complete (no batch entry points)."""

    def __init__(self, guard: Any) -> None:
        self.guard = guard

    def check(self, info: RequestInfo) -> Decision:
        decision: Decision = self.guard.check(info)
        return decision

    def complete(self, info: RequestInfo, decision: Decision, **outcome: Any) -> None:
        self.guard.complete(info, decision, **outcome)


def test_batch_entry_points_change_no_decision(small_trace: Path) -> None:
    from abuseguard.guard import Guard

    reports = []
    for wrap in (False, True):
        policy = Policy(exempt_paths=("/v1/models",))
        guard: Any = Guard(policy)
        builder = ReportBuilder()
        with TraceReader(small_trace) as reader:
            run_replay(reader, _OneByOne(guard) if wrap else guard, builder, cost_mode="upfront")
        reports.append(builder.build())
    assert reports[0] == reports[1]
    assert reports[0]["requests"] > 2 * BATCH


def test_prefetch_primes_what_the_guard_fingerprints() -> None:
    from abuseguard.guard import Guard

    guard = Guard(Policy(exempt_paths=["/health"]))
    prefetch = content_prefetch(guard)
    assert prefetch is not None
    records = _records(
        {"ts": 0, "ip": "a", "body": "think step by step", "path": "/v1/chat"},
        {"ts": 1, "ip": "a", "body": "show your work", "path": "/health/deep"},
        {"ts": 2, "ip": "a", "body": "", "path": "/v1/chat"},
        {"ts": 3, "ip": "a", "path": "/v1/chat"},
        {"ts": 4, "ip": "a", "body": "{}", "headers": {"content-type": "application/json"}},
    )
    prefetch(records)
    primed = guard.content._primed
    assert primed[id(records[0].info.body)][1] is None
    assert primed[id(records[4].info.body)][1] == "application/json"
    assert len(primed) == 2
    assert content_prefetch(ScriptedGuard({})) is None
    assert content_prefetch(Guard(Policy(scoring=None))) is None
