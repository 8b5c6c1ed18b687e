"""Scripts and the command pipeliner of the Redis backend.

`Scripts` reads the Lua resource files and knows their SHA1, so EVALSHA is sent without
asking Redis first; `Pipeliner` sends every command queued during one event-loop tick as
one pipeline (one write, one read): under concurrency many requests share a round trip
instead of paying redis-py's per-command cost each, and a request is never delayed by
more than the current tick. Fire-and-forget commands (concurrency releases, cost
reconciliation, lease renewals) ride along in the same pipelines. A script missing on the
server (NOSCRIPT: restart, failover, SCRIPT FLUSH) is loaded again and the affected
commands are sent once more, inside the same time budget. There are no other retries.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from importlib import resources
from typing import Any

from redis.exceptions import NoScriptError, ResponseError

from abuseguard.errors import BackendError

logger = logging.getLogger("abuseguard.backends")

Command = tuple[Any, ...]


class Script:
    __slots__ = ("name", "sha", "source")

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


def _encode(arg: Any) -> bytes:
    if isinstance(arg, bytes):
        return arg
    if isinstance(arg, str):
        return arg.encode()
    if isinstance(arg, bool):
        raise TypeError("a bool is not a Redis argument")
    if isinstance(arg, int):
        return b"%d" % arg
    if isinstance(arg, float):
        return repr(float(arg)).encode()  # float(): numpy scalars repr as "np.float64(..)"
    raise TypeError(f"cannot send {type(arg).__name__} to Redis")


def pack_commands(commands: Sequence[Command]) -> bytes:
    """RESP2 arrays of bulk strings for ``commands``, concatenated."""
    out: list[bytes] = []
    for command in commands:
        out.append(b"*%d\r\n" % len(command))
        for arg in command:
            data = _encode(arg)
            out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)


def load_script(name: str) -> Script:
    text = (resources.files("abuseguard.backends.redis") / "lua" / f"{name}.lua").read_text("utf-8")
    return Script(name, text)


class Pipeliner:
    """Batches the commands of one loop tick into one pipeline on a redis-py client.

    ``direct``: a standalone server, reached through the client's connection pool with
    RESP packed here (see `_run_direct`); otherwise redis-py pipelines (Cluster routing).
    ``call`` returns a future of the command's reply (an exception when it failed);
    ``send`` queues a command nobody waits for, dropped when ``max_pending`` are queued.
    ``timeout`` bounds each pipeline; a timed-out pipeline's connection is dropped by
    redis-py, so a late reply can never be read as the answer to another command.
    """

    def __init__(
        self,
        client: Any,
        scripts: Sequence[Script],
        *,
        timeout: float,
        max_pending: int = 10_000,
        direct: bool = False,
        max_connections: int = 64,
    ) -> None:
        self.client = client
        self.direct = direct
        self.max_connections = max_connections
        self._idle: list[Any] = []
        self._opened = 0
        self.scripts = {s.sha: s for s in scripts}
        self.timeout = timeout
        self.max_pending = max_pending
        self.loop = asyncio.get_running_loop()
        self._queue: list[tuple[Command, asyncio.Future[Any] | None]] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.round_trips = 0  # pipelines or single commands sent (each one round trip)
        self.commands = 0
        self.dropped = 0  # fire-and-forget commands dropped (queue full or failed)
        self.reloads = 0  # NOSCRIPT recoveries

    def call(self, command: Command) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = self.loop.create_future()
        self._queue.append((command, future))
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._flush)
        return future

    def send(self, command: Command) -> None:
        if len(self._queue) >= self.max_pending:
            self.dropped += 1
            return
        self._queue.append((command, None))
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._flush)

    @property
    def pending(self) -> int:
        return len(self._queue) + len(self._tasks)

    def _flush(self) -> None:
        self._scheduled = False
        batch, self._queue = self._queue, []
        if not batch:
            return
        task = self.loop.create_task(self._execute(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _execute(self, batch: list[tuple[Command, asyncio.Future[Any] | None]]) -> None:
        commands = [command for command, _ in batch]
        try:
            async with asyncio.timeout(self.timeout):
                results = await self._run(commands)
                missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
                if missing:
                    await self.load_scripts()
                    self.reloads += 1
                    again = await self._run([commands[i] for i in missing])
                    for i, result in zip(missing, again, strict=True):
                        results[i] = result
        except BaseException as exc:
            error = exc if isinstance(exc, Exception) else BackendError("cancelled")
            if isinstance(exc, TimeoutError):
                error = BackendError(f"no answer from Redis within {self.timeout * 1000:.0f} ms")
            for _, future in batch:
                if future is None:
                    self.dropped += 1
                elif not future.done():
                    future.set_exception(error)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), result in zip(batch, results, strict=True):
            if future is None:
                if isinstance(result, Exception):
                    self.dropped += 1
            elif not future.done():
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    async def _run(self, commands: list[Command]) -> list[Any]:
        self.round_trips += 1
        self.commands += len(commands)
        if self.direct:
            return await self._run_direct(commands)
        if len(commands) == 1:
            try:
                return [await self.client.execute_command(*commands[0])]
            except ResponseError as exc:
                return [exc]
        pipe = self.client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        results: list[Any] = await pipe.execute(raise_on_error=False)
        return results

    async def _run_direct(self, commands: list[Command]) -> list[Any]:
        """One write of every command, then the replies in order, on one pooled connection.

        redis-py's own command path costs tens of microseconds per command (argument
        encoding, a task per socket write when a socket timeout is set); this path packs
        RESP itself and leaves connecting, TLS, AUTH and reply parsing to redis-py. Any
        failure or cancellation drops the connection, so no reply is ever misattributed.
        """
        idle = self._idle
        if idle:
            connection = idle.pop()
        elif self._opened < self.max_connections:
            # Connections of our own (made by the client's pool, so with its settings):
            # the pool's checkout costs more than a round trip's worth of Python here.
            connection = self.client.connection_pool.make_connection()
            self._opened += 1
        else:
            raise BackendError(f"all {self.max_connections} Redis connections are busy")
        try:
            await connection.send_packed_command(pack_commands(commands), check_health=False)
            results: list[Any] = []
            for _ in commands:
                try:
                    results.append(await connection.read_response())
                except ResponseError as exc:
                    results.append(exc)
        except BaseException:
            await connection.disconnect(nowait=True)  # reconnects on its next use
            raise
        finally:
            idle.append(connection)
        return results

    async def load_scripts(self) -> None:
        """SCRIPT LOAD every script (on every primary in a cluster)."""
        for script in self.scripts.values():
            sha = await self.client.script_load(script.source)
            if isinstance(sha, bytes):
                sha = sha.decode()
            if sha != script.sha:
                raise BackendError(f"Redis hashed {script.name}.lua as {sha}, not {script.sha}")

    async def drain(self, timeout: float) -> None:
        """Flush what is queued and wait (bounded) for the pipelines in flight."""
        if self._queue:
            self._flush()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self._queue.clear()

    async def close(self) -> None:
        """Disconnect the connections of the direct path."""
        idle, self._idle = self._idle, []
        for connection in idle:
            try:
                await connection.disconnect(nowait=True)
            except Exception:
                logger.debug("disconnect failed", exc_info=True)


__all__ = ["Command", "Pipeliner", "Script", "load_script", "pack_commands"]
