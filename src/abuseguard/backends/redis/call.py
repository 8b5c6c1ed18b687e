"""One call of decide.lua: the ops of a request in, the parsed reply out.

The argument layout is documented at the top of ``lua/decide.lua``; this module is its
only writer and reader. Ops are added in any order and laid out in the script's order
(ban, sketches, buckets, quotas, concurrency); each op keeps a ``tag`` so the caller can
map the answers back (a table kind, a sketch slot, a quota index...).
"""

from __future__ import annotations

from typing import Any, Protocol

from abuseguard.backends.redis.pipe import Command

_FIXED_WINDOW = 1
_SLIDING_WINDOW = 2
STRATEGY_CODES = {"fixed-window": _FIXED_WINDOW, "sliding-window-counter": _SLIDING_WINDOW}


class SketchSink(Protocol):
    """Where `RedisBackend._plan_sketches` puts sketch ops: a `ScriptCall`, or synced
    mode's queue (`sketches.SketchQueue`)."""

    def sketch(
        self, current: str, previous: str, ttl_ms: int, items: list[Any], tag: Any
    ) -> None: ...


class ScriptCall:
    """Builder of one EVALSHA of decide.lua."""

    __slots__ = (
        "ban_check",
        "ban_gate",
        "ban_key",
        "ban_ms",
        "bucket_args",
        "bucket_keys",
        "bucket_tags",
        "conc_args",
        "conc_keys",
        "conc_tags",
        "extra_from",
        "force",
        "gate",
        "now",
        "override",
        "quota_args",
        "quota_keys",
        "quota_tags",
        "serves",
        "sketch_args",
        "sketch_keys",
        "sketch_tags",
    )

    def __init__(
        self,
        now: float | str,
        *,
        serves: bool = True,
        gate: bool = True,
        override: bool = True,
        ban_gate: bool = False,
        force: bool = False,
    ) -> None:
        self.now = now
        self.serves = serves
        self.gate = gate
        self.override = override
        self.ban_gate = ban_gate
        self.force = force
        self.ban_key: str | None = None
        self.ban_ms = 0
        self.ban_check = False
        self.sketch_keys: list[str] = []
        self.sketch_args: list[str] = []
        self.sketch_tags: list[Any] = []
        self.bucket_keys: list[str] = []
        self.bucket_args: list[str] = []
        self.bucket_tags: list[Any] = []
        self.quota_keys: list[str] = []
        self.quota_args: list[str] = []
        self.quota_tags: list[Any] = []
        self.conc_keys: list[str] = []
        self.conc_args: list[str] = []
        self.conc_tags: list[Any] = []
        self.extra_from: tuple[int, int, int] | None = None

    def mark_extra(self) -> None:
        """The ops added from now on are not the app-wide limits' (route and plan limits,
        `route_ops`): `app_ops` counts the ops before them."""
        if self.extra_from is None:
            self.extra_from = (len(self.bucket_tags), len(self.quota_tags), len(self.conc_tags))

    @property
    def app_ops(self) -> tuple[int, int, int]:
        """How many bucket, quota and concurrency ops are the app-wide limits'."""
        if self.extra_from is not None:
            return self.extra_from
        return len(self.bucket_tags), len(self.quota_tags), len(self.conc_tags)

    def ban(self, key: str, *, ban_ms: int = 0, check: bool = True) -> None:
        self.ban_key = key
        self.ban_ms = ban_ms
        self.ban_check = check

    def sketch(self, current: str, previous: str, ttl_ms: int, items: list[Any], tag: Any) -> None:
        """PFADD ``items`` (none: only count) to ``current``; count current | previous."""
        self.sketch_keys += (current, previous)
        self.sketch_args.append(" ".join([str(ttl_ms), *map(str, items)]))
        self.sketch_tags.append(tag)

    def bucket(
        self,
        key: str,
        rate: float,
        burst: float,
        cost: float,
        ttl_rate: float,
        shadow: bool,
        tag: Any,
    ) -> None:
        self.bucket_keys.append(key)
        self.bucket_args.append(
            f"{float(rate)!r} {float(burst)!r} {float(cost)!r} {float(ttl_rate)!r} "
            f"{1 if shadow else 0}"
        )
        self.bucket_tags.append(tag)

    def quota(
        self,
        key: str,
        strategy: str,
        amount: int,
        window: float,
        cost: int,
        shadow: bool,
        tag: Any,
        *,
        always_asked: bool = False,
    ) -> None:
        """``always_asked``: tested even when the gate is closed (a route or plan quota,
        which the memory backend tests before anything else); counted only when served."""
        flags = (2 if always_asked else 0) + (1 if shadow else 0)
        self.quota_keys.append(key)
        self.quota_args.append(
            f"{STRATEGY_CODES[strategy]} {int(amount)} {float(window)!r} {int(cost)} {flags}"
        )
        self.quota_tags.append(tag)

    def conc(
        self,
        key: str,
        limit: int,
        lease: str,
        ttl_ms: int,
        tag: Any,
        shadow: bool = False,
        *,
        always_asked: bool = False,
    ) -> None:
        """``always_asked``: tested even when the gate is closed (a route or plan limit),
        the lease taken only with a served request."""
        flags = (2 if always_asked else 0) + (1 if shadow else 0)
        self.conc_keys.append(key)
        self.conc_args.append(f"{limit} {lease} {ttl_ms} {flags}")
        self.conc_tags.append(tag)

    @property
    def empty(self) -> bool:
        return not (
            self.ban_key
            or self.sketch_keys
            or self.bucket_keys
            or self.quota_keys
            or self.conc_keys
        )

    def command(self, sha: str) -> Command:
        keys: list[str] = [self.ban_key] if self.ban_key is not None else []
        keys += self.sketch_keys
        keys += self.bucket_keys
        keys += self.quota_keys
        keys += self.conc_keys
        header = (
            f"{1 if self.serves else 0}{1 if self.gate else 0}{1 if self.override else 0}"
            f"{1 if self.ban_check else 0}{1 if self.ban_gate else 0}{1 if self.force else 0}"
            f"{len(self.sketch_tags):02d}{len(self.bucket_tags):02d}{len(self.quota_tags):02d}"
            f"{len(self.conc_tags):02d}{self.ban_ms}"
        )
        return (
            "EVALSHA",
            sha,
            len(keys),
            *keys,
            self.now,
            header,
            *self.sketch_args,
            *self.bucket_args,
            *self.quota_args,
            *self.conc_args,
        )

    def parse(self, reply: Any) -> Reply:
        return Reply(self, reply)


class Answers:
    """The quotas and concurrency answers of one reply, as the guard asks for them."""

    __slots__ = ("acquired", "asked", "next", "quotas")

    def __init__(
        self, quotas: list[tuple[bool, float, float] | None], acquired: bool | None
    ) -> None:
        self.quotas = quotas
        self.acquired = acquired  # None: Redis did not take a slot (gate closed)
        self.next = 0
        self.asked = False

    def hit_quota(
        self, limit: str, strategy: str, identity: str, cost: int
    ) -> tuple[bool, float, float]:
        i = self.next
        self.next += 1
        answer = self.quotas[i] if i < len(self.quotas) else None
        return answer if answer is not None else (True, 0.0, 0.0)

    def acquire(self, identity: str, limit: int) -> bool:
        self.asked = True
        return True if self.acquired is None else self.acquired


class Reply:
    """The answers of one call. ``status``: 0 not banned, 1 banned (nothing else done),
    2 banned in shadow mode (quotas and concurrency still applied)."""

    __slots__ = (
        "ban_left",
        "charged",
        "conc",
        "conc_full",
        "denied",
        "now",
        "quotas",
        "retry",
        "sketches",
        "status",
        "tokens",
    )

    def __init__(self, call: ScriptCall, reply: Any) -> None:
        if not isinstance(reply, list) or len(reply) < 3:
            raise ValueError(f"unexpected reply from decide.lua: {reply!r:.200}")
        self.status = int(reply[0])
        self.now = float(reply[1])
        self.ban_left = float(reply[2])
        self.sketches: list[float] = []
        self.denied = 0
        self.charged = False
        self.retry = 0.0
        self.tokens: list[float] = []
        self.quotas: list[tuple[bool, bool, float, float]] = []
        self.conc: list[tuple[bool, bool]] = []  # (asked, lease taken)
        self.conc_full: list[bool] = []  # the limit was reached: it refused (or shadowed)
        if self.status == 1:
            return
        i = 3
        n = len(call.sketch_tags)
        self.sketches = [float(v) for v in reply[i : i + n]]
        i += n
        self.denied = int(reply[i])
        self.charged = reply[i + 1] == 1
        self.retry = float(reply[i + 2])
        i += 3
        n = len(call.bucket_tags)
        self.tokens = [float(v) for v in reply[i : i + n]]
        i += n
        for _ in call.quota_tags:
            self.quotas.append(
                (reply[i] == 1, reply[i + 1] == 1, float(reply[i + 2]), float(reply[i + 3]))
            )
            i += 4
        for _ in call.conc_tags:
            self.conc.append((reply[i] == 1, reply[i + 1] == 1))
            self.conc_full.append(reply[i + 1] == 2)
            i += 2
        if i != len(reply):
            raise ValueError(f"decide.lua replied {len(reply)} values, expected {i}")


__all__ = ["STRATEGY_CODES", "Answers", "Reply", "ScriptCall", "SketchSink"]
