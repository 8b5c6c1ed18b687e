"""Structured decision logs: one record per non-allow decision, hashed identities only."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from abuseguard import Action, Decision, Policy, PolicyState, RequestInfo, TokenBucket
from abuseguard.logs import DECISION_LOGGER, LogObserver
from abuseguard.testing import ManualClock, fresh_guard

SECRET_KEY = "sk-live-SECRET-0123456789"


def records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == DECISION_LOGGER]


def test_one_record_per_non_allow_decision_without_raw_keys(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=DECISION_LOGGER)
    guard = fresh_guard(
        Policy(bucket=TokenBucket("1/minute", burst=2), scoring=None), observers=[LogObserver()]
    )
    info = RequestInfo(
        ip="198.51.100.20",
        key=SECRET_KEY,
        method="POST",
        path="/v1/chat",
        headers={"authorization": f"Bearer {SECRET_KEY}"},
        body=SECRET_KEY,
    )
    for _ in range(4):
        guard.check(info)
    logged = records(caplog)
    assert len(logged) == 2  # two allows, two throttles
    record = logged[0]
    assert record.levelno == logging.WARNING
    fields: dict[str, Any] = record.abuseguard  # type: ignore[attr-defined]
    assert fields["action"] == "throttle"
    assert fields["enforced"] == "throttle"
    assert fields["reasons"] == ["rate"]
    assert fields["identity"].startswith("k:")
    assert fields["violated"] == ["default"]
    assert fields["method"] == "POST" and fields["path"] == "/v1/chat"
    assert fields["retry_after"] > 0
    assert SECRET_KEY not in caplog.text
    assert SECRET_KEY not in repr(fields)
    assert "action=throttle" in record.getMessage()


def test_served_actions_log_at_info_and_shadow_says_so(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=DECISION_LOGGER)
    observer = LogObserver()
    observer(
        RequestInfo(ip="192.0.2.1"),
        Decision(Action.LOG, ("cadence",), 0.55, identity="i:192.0.2.1"),
    )
    observer(
        RequestInfo(ip="192.0.2.1"),
        Decision(
            Action.BLOCK,
            ("fan_in",),
            0.95,
            shadow=True,
            identity="i:192.0.2.1",
            contributions=(("fan_in", 3.0),),
        ),
    )
    first, second = records(caplog)
    assert first.levelno == logging.INFO
    assert second.levelno == logging.WARNING
    assert second.abuseguard["shadow"] is True  # type: ignore[attr-defined]
    assert second.abuseguard["enforced"] == "allow"  # type: ignore[attr-defined]
    assert second.abuseguard["contributions"] == {"fan_in": 3.0}  # type: ignore[attr-defined]


def test_allow_is_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=DECISION_LOGGER)
    LogObserver()(RequestInfo(ip="192.0.2.1"), Decision(Action.ALLOW))
    assert records(caplog) == []


def test_hash_ips_hides_addresses(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=DECISION_LOGGER)
    observer = LogObserver(hash_ips=True)
    observer(
        RequestInfo(ip="192.0.2.77"), Decision(Action.THROTTLE, ("rate",), identity="i:192.0.2.77")
    )
    (record,) = records(caplog)
    assert "192.0.2.77" not in caplog.text
    assert record.abuseguard["identity"].startswith("i:")  # type: ignore[attr-defined]
    assert len(record.abuseguard["ip"]) == 16  # type: ignore[attr-defined]


def test_hostile_paths_stay_on_one_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=DECISION_LOGGER)
    path = '/a b\n"injected"=1\x00\udcff'
    LogObserver()(RequestInfo(ip="192.0.2.1", path=path), Decision(Action.BLOCK, ("deny_list",)))
    message = records(caplog)[0].getMessage()
    assert "\n" not in message and "\x00" not in message
    assert 'path="/a b\\n\\"injected\\"=1\\u0000\\udcff"' in message


def test_max_per_second_caps_and_reports_suppressed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=DECISION_LOGGER)
    clock = ManualClock()
    observer = LogObserver(max_per_second=2, clock=clock)
    denial = Decision(Action.THROTTLE, ("rate",))
    for _ in range(5):
        observer(RequestInfo(ip="192.0.2.1"), denial)
    assert len(records(caplog)) == 2
    clock.advance(1.0)
    observer(RequestInfo(ip="192.0.2.1"), denial)
    last = records(caplog)[-1]
    assert last.abuseguard["suppressed"] == 3  # type: ignore[attr-defined]
    assert "suppressed=3" in last.getMessage()


def test_disabled_logger_costs_no_record(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger=DECISION_LOGGER)
    LogObserver()(RequestInfo(ip="192.0.2.1"), Decision(Action.THROTTLE, ("rate",)))
    assert records(caplog) == []


def test_custom_logger_object(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("myapp.abuse")
    caplog.set_level(logging.INFO, logger="myapp.abuse")
    LogObserver(logger, level=logging.DEBUG, denial_level=logging.ERROR)(
        RequestInfo(ip="192.0.2.1"),
        Decision(Action.BLOCK, ("geo",), policies=(PolicyState("p", 1, 1, 0, 1, True),)),
    )
    (record,) = [r for r in caplog.records if r.name == "myapp.abuse"]
    assert record.levelno == logging.ERROR


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_per_second": 0},
        {"max_per_second": -1.0},
        {"max_per_second": float("nan")},
        {"max_per_second": True},
        {"level": "INFO"},
        {"denial_level": None},
        {"logger": 42},
    ],
)
def test_bad_arguments_raise(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        LogObserver(**kwargs)
