"""Synced mode's bookkeeping: what this worker consumed, sent to Redis in batches, and the
shared state written back into the engine's rows (see `synced` for the semantics).

Per request (`Syncer.record`, no I/O): the cost the kernel charged to each synced bucket
(the identity's, and its IP, prefix and ASN buckets when the policy has them) is added to
a pending entry, one per identity until it is sent, with a new ban when the ladder reached
it. The entry is due (sent with the next flush) when the request was refused or banned,
a bucket fell below half its burst, ``burst / (2 workers)`` was consumed, or a cold start
held it back; otherwise it is quiet and becomes due after ``defer`` (the share window).
Per flush (`Syncer.flush`, every ``sync_interval``): the due entries (at most `MAX_FLUSH`;
the rest wait for the next flush) go to ``lua/sync.lua`` (on one server up to `CHUNK`
identities per script call, all calls in one pipeline, so one round trip; in a Cluster one
call per identity, pipelined), which refills the shared bucket on Redis time, charges the
delta (possibly into debt: it was already served) and answers the shared tokens, how many
workers share the bucket, and the ban. Written back into the local row: the worker's share
of the tokens (``tokens / sharing`` while positive, the whole debt when negative) minus
what was consumed here since the flush left, and the ban (held by the key table when the
identity's row was evicted here meanwhile, so it applies on its next request).

Cold start: with ``workers`` > 1, an identity this worker has not synced within the share
window starts with at most ``burst / workers`` locally until its first sync (the other
workers may be spending the same tokens), and that first sync gives it ``1 / workers`` of
the shared tokens (workers that started it cold too may not have reported yet); from the
second sync on, its share is by the number of workers that really share it. The kernel
refills a local bucket at the full rate; so an identity this worker synced before starts
each new entry with at most ``min(burst, T + rate·Δ) / n`` locally (T the shared tokens at
its last sync, Δ the time since, n the workers sharing it then, or ``workers`` once the
share window has passed): a burst after an idle time is one burst for the fleet, not one
per worker.

Bounded: at most ``max_pending`` identities wait (beyond that, new identities are not
recorded and are counted in ``dropped``); while more than half of that wait, the oldest
quiet ones are sent early. A failed flush puts its entries back, within the same bound.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import math
import time
from typing import TYPE_CHECKING, Any

from abuseguard.backends.redis.sketches import SketchQueue
from abuseguard.engine import layout as L

if TYPE_CHECKING:
    from abuseguard.backends.base import Stages
    from abuseguard.backends.redis.synced import SyncedRedisBackend
    from abuseguard.guard import Prepared

CHUNK = 256  # identities per script call on a standalone server
MAX_FLUSH = 4096  # identities per flush; more wait for the next one


class Entry:
    """What one worker owes one shared bucket since its last flush."""

    __slots__ = ("ban", "delta", "scale", "since")

    def __init__(self, since: float) -> None:
        self.delta = 0.0  # cost charged locally (refunds are negative)
        self.scale = 1.0  # NAT multiplier of a network bucket (rate and burst)
        self.ban = False  # the ladder banned the identity here
        self.since = since  # when it was first touched (monotonic): quiet ones wait


Pending = dict[tuple[int, Any], Entry]


class Syncer:
    def __init__(
        self, backend: SyncedRedisBackend, stages: Stages, *, max_pending: int, workers: int
    ) -> None:
        self.backend = backend
        self.stages = stages
        self.max_pending = max_pending
        self.workers = workers
        self.pending: Pending = {}  # every entry not sent yet
        self.due: Pending = {}  # those the next flush sends
        self.order: collections.deque[tuple[float, tuple[int, Any]]] = collections.deque()
        self.defer = backend.share_window  # a quiet entry waits at most this long
        self.synced: dict[tuple[int, Any], float] = {}  # last write-back (monotonic)
        # At that write-back: the workers sharing it, the shared tokens, the engine's time.
        self.last_sync: dict[tuple[int, Any], tuple[int, float, float]] = {}
        self.paused = False  # Redis is away: nothing is recorded
        self.sketches = SketchQueue(stages, max_pending=max_pending)
        limits = backend.limits
        bucket = limits.key_bucket
        self.key_bucket = bucket
        self.net_buckets = {net.kind: net.bucket for net in limits.network_buckets}
        self.ban_ms = backend.ban_ms if backend.ban_level > 0 else 0  # 0: bans not synced
        self.synced_key = bucket is not None or self.ban_ms > 0
        vector = limits.bucket_vector()  # (rate, burst) per kind; 0, 0: no bucket
        self.bursts = vector[1::2]
        # Per kind 0..3: "rate burst ttl_rate" (burst 0: no bucket), sent once per call.
        self.rates = vector[0::2]
        ttl_rates = [1.0] * L.N_KINDS
        if bucket is not None:
            ttl_rates[L.KIND_KEY] = limits.key_ttl_rate
        for kind, net_bucket in self.net_buckets.items():
            ttl_rates[kind] = net_bucket.per_second * limits.load_floor
        self.defaults = tuple(
            f"{self.rates[kind]!r} {self.bursts[kind]!r} {ttl_rates[kind]!r}"
            for kind in (L.KIND_KEY, L.KIND_IP, L.KIND_PREFIX, L.KIND_ASN)
        )
        self.window_arg = repr(backend.share_window)
        # Due at once: a bucket below half its burst here (index -1: no bucket at all), or
        # burst / (2 workers) consumed here since the last sync.
        self.half = [b / 2 for b in self.bursts] + [-math.inf]
        self.thresholds = [b / (2 * workers) if b > 0 else math.inf for b in self.bursts]
        # The engine's tables as memoryviews: Python floats in and out, no numpy scalars.
        self.rows = stages.rows
        self.dropped = 0  # identities left out of a flush (pending full)
        self.flushes = 0
        self.entries_sent = 0

    # -- per request ---------------------------------------------------------------------

    def record(self, p: Prepared, charged: float, fan_in: float, ban: bool, due: bool) -> None:
        """The kernel decided ``p``: remember what it charged (0 when refused). ``due``:
        sync it with the next flush (a refusal, a ban, a bucket below half its burst);
        otherwise it may wait (see the module docstring)."""
        pending = self.pending
        thresholds = self.thresholds
        if self.synced_key:
            k = (L.KIND_KEY, p.identity)
            entry = pending.get(k)
            if entry is None:
                entry = self._new(k, charged)
            if entry is not None:
                entry.delta += charged
                if ban:
                    entry.ban = True
                if due or ban or entry.delta >= thresholds[L.KIND_KEY]:
                    self.due[k] = entry
        net = self.net_buckets
        profile = p.profile
        if not net or profile is None or profile.allowed:
            return
        backend = self.backend
        scale = backend.limits.nat_multiplier(profile.nat_eligible, fan_in)
        address = p.address
        for kind in net:
            if kind == L.KIND_ASN:
                key: Any = profile.asn_key
                if key is None:
                    continue
            elif not address.version:
                continue
            else:
                key = address.ip_key if kind == L.KIND_IP else address.prefix_key
            k = (kind, key)
            entry = pending.get(k)
            if entry is None:
                entry = self._new(k, charged)
                if entry is None:
                    continue
            entry.delta += charged
            if kind != L.KIND_ASN:
                entry.scale = scale
            if due or entry.delta >= thresholds[kind]:
                self.due[k] = entry

    def _new(self, k: tuple[int, Any], charged: float) -> Entry | None:
        if len(self.pending) >= self.max_pending:
            self.dropped += 1
            return None
        now = time.monotonic()
        entry = self.pending[k] = Entry(now)
        self.order.append((now, k))
        workers = self.workers
        if workers > 1:
            last = self.synced.get(k)
            cold = last is None or now - last > self.backend.share_window
            kind = k[0]
            burst = self.bursts[kind]
            known = self.last_sync.get(k)
            if known is None:
                if cold and self._cold_start(k, charged, burst / workers):
                    self.due[k] = entry  # held back: its first sync gives its share
            else:
                # The kernel refilled the local bucket at the full rate since the last sync;
                # keep this worker to its share of what the shared bucket refilled meanwhile,
                # so that a burst after an idle time gets one burst from the fleet, not one
                # per worker.
                sharing, tokens, at = known
                sharing = workers if cold else sharing
                if sharing > 1:
                    refilled = tokens + self.rates[kind] * (self.stages.clock() - at)
                    cap = min(burst, refilled) / sharing
                    if self._cold_start(k, charged, cap) and cold:
                        self.due[k] = entry
        return entry

    def _cold_start(self, k: tuple[int, Any], charged: float, cap: float) -> bool:
        """Hold an identity this worker has not synced lately to ``cap`` tokens until its
        first sync (the request just decided is already charged); True if it did."""
        if cap <= 0.0:
            return False
        kind, key = k
        rows = self.rows
        row = rows.row(kind, key)
        if row is None:
            return False
        if rows.get(kind, row, L.F_TOKENS) + charged <= cap:
            return False
        rows.put(kind, row, L.F_TOKENS, cap - charged)
        return True

    def charge(self, identity: Any, delta: float, kind: int = L.KIND_KEY) -> None:
        """A cost reconciled after the response (``delta`` < 0 refunds): charged here and
        owed to the shared bucket (the identity's, or a network's of that ``kind``)."""
        row = self.rows.row(kind, identity)
        if row is not None:
            self.rows.charge(kind, row, delta)
        has_bucket = self.key_bucket is not None if kind == L.KIND_KEY else kind in self.net_buckets
        if self.paused or not has_bucket:
            return
        k = (kind, identity)
        entry = self.pending.get(k)
        if entry is None:
            entry = self._new(k, 0.0)
        if entry is not None:
            entry.delta += delta
            if abs(entry.delta) >= self.thresholds[kind]:
                self.due[k] = entry

    # -- per flush -------------------------------------------------------------------------

    def clear(self) -> int:
        """Forget everything pending (Redis is away); how many entries that was."""
        self.sketches.clear()
        count = len(self.pending)
        self.pending = {}
        self.due = {}
        self.order.clear()
        return count

    def take(self, *, everything: bool = False) -> Pending:
        """The entries the next flush sends (at most `MAX_FLUSH`): the due ones, and the
        quiet ones that waited long enough (``everything``: all of them), or the oldest
        quiet ones while more than half of ``max_pending`` wait (rather than refuse new
        identities when it is full)."""
        pending, due = self.pending, self.due
        order = self.order
        cutoff = math.inf if everything else time.monotonic() - self.defer
        crowd = len(pending) - len(due) - self.max_pending // 2
        while order and (crowd > 0 or order[0][0] <= cutoff):
            since, k = order.popleft()
            entry = pending.get(k)
            if entry is not None and entry.since == since and k not in due:
                due[k] = entry
                crowd -= 1
        if len(due) <= MAX_FLUSH:
            batch, self.due = due, {}
        else:
            batch = dict(itertools.islice(due.items(), MAX_FLUSH))
            for k in batch:
                del due[k]
        for k in batch:
            del pending[k]
        return batch

    def put_back(self, batch: Pending) -> None:
        """A flush failed: its entries are due again (within max_pending)."""
        pending, due = self.pending, self.due
        for k, old in batch.items():
            entry = pending.get(k)
            if entry is None:
                if len(pending) >= self.max_pending:
                    self.dropped += 1
                    continue
                pending[k] = entry = old
            else:
                entry.delta += old.delta
                entry.ban = entry.ban or old.ban
            due[k] = entry

    async def flush(self, *, everything: bool = False) -> None:
        """Send what is due (and the queued sketches), write the answers back. Raises when
        Redis failed (the entries are then due again)."""
        batch = self.take(everything=everything)
        sketches = self.sketches
        if not batch and not sketches.ops:
            return
        backend = self.backend
        pipe = backend.pipe
        if pipe is None:
            self.put_back(batch)
            return
        items = list(batch.items())
        step = 1 if backend.cluster else CHUNK  # a Cluster script call: one slot's keys
        groups = [items[i : i + step] for i in range(0, len(items), step)]
        commands = [self._command(group) for group in groups]
        now_arg: float | str = "" if backend.server_time else self.stages.clock()
        calls = sketches.calls(now_arg, cluster=backend.cluster)
        decide = backend.scripts["decide"].sha
        commands += [call.command(decide) for call in calls]
        replies = await asyncio.gather(*(pipe.call(c) for c in commands), return_exceptions=True)
        sketches.write_back(calls, replies[len(groups) :])
        error: BaseException | None = None
        now = self.stages.clock()
        mono = time.monotonic()
        for group, reply in zip(groups, replies[: len(groups)], strict=True):
            if isinstance(reply, BaseException):
                error = error or reply
                self.put_back(dict(group))
                continue
            self._write_back(group, reply, now, mono)
        self.flushes += 1
        if error is not None:
            raise error
        self.entries_sent += len(items)
        if len(self.synced) > 4 * self.max_pending:
            # Older than the share window is as good as never synced (a cold start): keep
            # the recent ones, so that active clients are not held back by a cleanup.
            recent = mono - self.backend.share_window
            self.synced = {k: t for k, t in self.synced.items() if t > recent}
            if len(self.synced) > 4 * self.max_pending:
                self.synced.clear()
            self.last_sync = {k: v for k, v in self.last_sync.items() if k in self.synced}

    def _command(self, group: list[tuple[tuple[int, Any], Entry]]) -> tuple[Any, ...]:
        """One call of sync.lua (argument layout at its top): the entries as lines of one
        argument, most of them a kind, an identity and a delta; the script names the keys
        (in a Cluster the one identity's bucket or ban key routes the call)."""
        backend = self.backend
        stages = self.stages
        lines: list[str] = []
        load = stages.load_factor()
        rows = self.rows
        bucket = self.key_bucket
        refill_factor = backend.limits.key_refill_factor
        for (kind, key), entry in group:
            if kind == L.KIND_KEY:
                factor = load
                if bucket is not None:
                    row = rows.row(L.KIND_KEY, key)
                    if row is not None:
                        factor *= refill_factor(rows.get(L.KIND_KEY, row, L.F_COUPLING_SCORE))
                if factor == 1.0 and not entry.ban:
                    lines.append(f"0 {key} {entry.delta!r}")
                else:
                    rate = max(self.rates[L.KIND_KEY] * factor, 1e-9)
                    lines.append(f"0 {key} {entry.delta!r} {rate!r} 1 {1 if entry.ban else 0}")
            else:
                scale = entry.scale
                if load == 1.0 and scale == 1.0:
                    lines.append(f"{kind} {key} {entry.delta!r}")
                else:
                    rate = max(self.rates[kind] * load * scale, 1e-9)
                    lines.append(f"{kind} {key} {entry.delta!r} {rate!r} {scale!r} 0")
        keys: tuple[str, ...] = ()
        if backend.cluster:  # one identity per call: its slot
            (kind, key), _ = group[0]
            if kind != L.KIND_KEY:
                keys = (backend.keys.network_base(kind, key) + ":b",)
            else:
                names = backend.keys.of(key)
                keys = (names.bucket if bucket is not None else names.ban,)
        now: float | str = "" if backend.server_time else stages.clock()
        return (
            "EVALSHA",
            backend.scripts["sync"].sha,
            len(keys),
            *keys,
            now,
            backend.worker_id,
            self.window_arg,
            self.ban_ms,
            backend.prefix,
            *self.defaults,
            "\n".join(lines),
        )

    def _write_back(
        self, group: list[tuple[tuple[int, Any], Entry]], reply: Any, now: float, mono: float
    ) -> None:
        if not isinstance(reply, list) or len(reply) != 1 + 3 * len(group):
            raise ValueError(f"unexpected reply from sync.lua: {reply!r:.200}")
        rows = self.rows
        pending = self.pending
        synced = self.synced
        workers = self.workers
        window = self.backend.share_window
        i = 1
        for k, _ in group:
            kind, key = k
            tokens, sharing, left = float(reply[i]), int(reply[i + 1]), float(reply[i + 2])
            i += 3
            last = synced.get(k)
            if last is None or mono - last > window:
                # A cold start's first sync: workers that started the client cold too may
                # not have reported yet, so assume every worker shares it, once.
                sharing = max(sharing, workers) if sharing > 0 else 0
            synced[k] = mono
            self.last_sync[k] = (sharing, tokens, now)
            row = rows.row(kind, key)
            if row is None:
                if kind == L.KIND_KEY and left > 0.0:  # evicted here: the ban is held
                    rows.hold_ban(key, now + left, now, self.bursts[L.KIND_KEY])
                continue
            if sharing > 0:
                share = tokens / sharing if tokens > 0.0 else tokens
                later = pending.get(k)
                if later is not None:
                    share -= later.delta
                rows.put(kind, row, L.F_TOKENS, share)
                rows.put(kind, row, L.F_BUCKET_TS, now)
            if left > 0.0 and now + left > rows.get(kind, row, L.F_BANNED_UNTIL):
                rows.put(kind, row, L.F_BANNED_UNTIL, now + left)


__all__ = ["CHUNK", "MAX_FLUSH", "Entry", "Syncer"]
