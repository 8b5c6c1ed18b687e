"""Structured logs: one stdlib ``logging`` record per non-allow decision.

``LogObserver`` is an observer (``Guard(observers=[...])`` or
``AbuseGuard(app, observers=[...])``). Each record has a readable message in logfmt style
and the same fields as a dict under the record attribute ``abuseguard`` (JSON formatters
such as python-json-logger print it as an object)::

    abuseguard decision action=throttle enforced=throttle shadow=false score=0.412
        reasons=rate identity=k:1f0c… method=POST path=/v1/chat/completions retry_after=2

Only hashed identities are logged: the decision's ``identity`` is ``k:<keyed hash>`` for
an API key, or ``i:<ip or IPv6 group>`` for a client without one. Raw API keys, headers
and bodies never reach a record. With ``hash_ips=True`` the IP identities and the client
address are hashed too.

Denials (challenge, throttle, block) are logged at ``denial_level`` (WARNING), the rest at
``level`` (INFO). Under a flood, ``max_per_second`` caps the records (a token bucket);
the next record that passes says how many were dropped (``suppressed``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from abuseguard.decision import DENIAL_ACTIONS, Action, Decision
from abuseguard.request import RequestInfo

DECISION_LOGGER = "abuseguard.decisions"
_DENIALS = DENIAL_ACTIONS
_ALLOW = Action.ALLOW  # a module constant: enum attribute lookups cost ~70 ns each


class LogObserver:
    """Logs every decision that is not a plain allow. See the module docs for the fields."""

    def __init__(
        self,
        logger: logging.Logger | str = DECISION_LOGGER,
        *,
        level: int = logging.INFO,
        denial_level: int = logging.WARNING,
        hash_ips: bool = False,
        max_per_second: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logging.getLogger(logger) if isinstance(logger, str) else logger
        if not isinstance(self.logger, logging.Logger):
            raise ValueError(f"logger must be a Logger or a name, got {logger!r}")
        for name, value in (("level", level), ("denial_level", denial_level)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be a logging level (int), got {value!r}")
        if max_per_second is not None and (
            isinstance(max_per_second, bool)
            or not isinstance(max_per_second, int | float)
            or not math.isfinite(max_per_second)
            or max_per_second <= 0
        ):
            raise ValueError(f"max_per_second must be a positive number, got {max_per_second!r}")
        self.level = level
        self.denial_level = denial_level
        self.hash_ips = hash_ips
        self.max_per_second = max_per_second
        self.clock = clock
        self._tokens = float(max_per_second or 0.0)
        self._last = clock()
        self.suppressed = 0

    def __call__(self, info: RequestInfo, decision: Decision) -> None:
        action = decision.action
        if action is _ALLOW:
            return
        level = self.denial_level if action in _DENIALS else self.level
        if not self.logger.isEnabledFor(level) or not self._admit():
            return
        fields = self.fields(info, decision)
        if self.suppressed:
            fields["suppressed"] = self.suppressed
            self.suppressed = 0
        self.logger.log(
            level, "abuseguard decision %s", _logfmt(fields), extra={"abuseguard": fields}
        )

    def fields(self, info: RequestInfo, decision: Decision) -> dict[str, Any]:
        """The structured fields of one record."""
        identity = decision.identity
        ip: str | None = info.ip
        if self.hash_ips:
            if identity.startswith("i:"):
                identity = "i:" + _digest(identity[2:])
            ip = _digest(info.ip) if info.ip else None
        fields: dict[str, Any] = {
            "action": decision.action.value,
            "enforced": decision.enforced_action.value,
            "shadow": decision.shadow,
            "score": round(decision.score, 4),
            "reasons": list(decision.reasons),
            "identity": identity,
            "ip": ip,
            "method": info.method,
            "path": info.path,
        }
        if info.route:
            fields["route"] = info.route
        if decision.retry_after is not None:
            fields["retry_after"] = round(decision.retry_after, 3)
        if decision.remaining is not None:
            fields["remaining"] = round(decision.remaining, 3)
        violated = [p.name for p in decision.policies if p.violated]
        if violated:
            fields["violated"] = violated
        if decision.contributions:
            fields["contributions"] = {k: round(v, 4) for k, v in decision.contributions}
        return fields

    def _admit(self) -> bool:
        rate = self.max_per_second
        if rate is None:
            return True
        now = self.clock()
        self._tokens = min(rate, self._tokens + max(0.0, now - self._last) * rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        self.suppressed += 1
        return False


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=8).hexdigest()


def _logfmt(fields: dict[str, Any]) -> str:
    parts = []
    for name, value in fields.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, list):
            text = ",".join(str(v) for v in value)
        elif isinstance(value, dict):
            text = ",".join(f"{k}:{v}" for k, v in value.items())
        elif value is None:
            text = "-"
        else:
            text = str(value)
        if not text or any(ch in text for ch in ' "=\\') or not text.isprintable():
            text = json.dumps(text)  # quotes and escapes: no log injection through a path
        parts.append(f"{name}={text}")
    return " ".join(parts)


__all__ = ["DECISION_LOGGER", "LogObserver"]
