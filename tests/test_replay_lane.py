"""Replay runs the background lane in the trace's time: flushed at interval boundaries,
deterministic, its clusters in the report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from abuseguard import Guard, Policy, RequestInfo, Scoring
from abuseguard.cli import main
from abuseguard.decision import Decision
from abuseguard.replay import run_replay
from abuseguard.report import ReportBuilder
from abuseguard.traces import TraceRecord

TIMINGS = ("decisions_per_second", "records_per_second", "elapsed_seconds", "guard_seconds")


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("replay_lane") / "trace.jsonl"
    args = ["simulate", "-o", str(path), "--seed", "3", "--hours", "1", "--scale", "0.3", "-q"]
    args += ["--only", "router,browser_chat,sdk_backend,campus_nat", "--no-progress"]
    # People enough that the router's accounts are a minority, as in any real population.
    args += ["--set", "browser_chat.users=1600"]
    assert main(args) == 0
    return path


def _replay(trace: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    assert main(["replay", str(trace), "--format", "json", "--no-progress", *extra]) == 0
    report: dict[str, Any] = json.loads(capsys.readouterr().out)
    for key in TIMINGS:
        report.pop(key)
    if report.get("operations"):
        report["operations"].pop("lane_seconds")
    return report


def test_replay_with_the_lane_is_deterministic_and_reports_clusters(
    trace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = _replay(trace, capsys)
    second = _replay(trace, capsys)
    assert first == second
    operations = first["operations"]
    assert operations["flushes"] > 100 and operations["interval"] == 1.0
    clusters = operations["clusters"]
    assert clusters, "the routers' accounts were not linked"
    for cluster in clusters:
        assert set(cluster) >= {"id", "size", "score", "linked_by", "lift", "labels"}
        assert len(cluster["linked_by"]) >= 3  # several kinds, never one
        assert cluster["labels"] == {"abusive": cluster["size"]}
        assert all(m.startswith("router/") for m in cluster["members_sample"])
    without = _replay(trace, capsys, "--no-lane")
    assert without["operations"] is None
    # The lane's priors catch more of the routers' requests than the guard alone.
    router = first["kinds"]["router"]
    assert router["mitigated"] >= without["kinds"]["router"]["mitigated"]
    assert first["labels"]["benign"]["mitigated"] == without["labels"]["benign"]["mitigated"]


def test_the_table_shows_each_cluster_with_its_evidence(
    trace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["replay", str(trace), "--no-progress", "--lane-interval", "5"]) == 0
    out = capsys.readouterr().out
    assert "operations (background lane" in out
    section = out[out.index("operations (background lane") :]
    assert "linked by" in section and "router/" in section
    with pytest.raises(SystemExit) as exit_info:
        main(["replay", str(trace), "--no-progress", "--lane-interval", "0"])
    assert exit_info.value.code == 2


class RecordingLane:
    """A lane that records what was queued at each flush."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.queued: list[float] = []
        self.flushes: list[list[float]] = []
        self.costs: list[tuple[str, float | None]] = []

    def __call__(self, info: RequestInfo, decision: Decision) -> None:
        assert info.ts is not None
        self.queued.append(info.ts)

    def flush(self) -> int:
        self.flushes.append(self.queued)
        self.queued = []
        return 0

    def completed(self, identity: str, cost: float | None) -> None:
        self.costs.append((identity, cost))


def test_run_replay_flushes_the_lane_at_interval_boundaries_of_the_trace_time() -> None:
    guard = Guard(Policy(scoring=Scoring(content=False), unverified_keys=None))
    lane = RecordingLane(interval=10.0)
    guard.observers.append(lane)
    times = [100.0, 101.0, 109.9, 110.0, 135.0, 139.0, 140.0]
    records = [
        TraceRecord(RequestInfo(ip="192.0.2.1", key="a", ts=ts), n, status=200, cost=float(n))
        for n, ts in enumerate(times)
    ]
    timing = run_replay(records, guard, ReportBuilder(), lane=lane)
    assert lane.flushes == [[100.0, 101.0, 109.9], [110.0], [135.0, 139.0], [140.0]]
    assert timing.lane_flushes == 4
    assert [cost for _, cost in lane.costs] == [float(n) for n in range(len(times))]
    assert timing.decisions_per_second is not None
