"""How many worker processes serve this app: a guess from the environment and argv.

uvicorn (``--workers N`` or ``WEB_CONCURRENCY``) and gunicorn (``-w N``, ``--workers N``,
``GUNICORN_CMD_ARGS`` or ``WEB_CONCURRENCY``) leave these traces in every worker: uvicorn
spawns its workers with multiprocessing, which copies the parent's argv into the child.
A count set only in a gunicorn config file is invisible here.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from collections.abc import Mapping, Sequence

logger = logging.getLogger("abuseguard")

_warned = False


def _int(text: str | None) -> int:
    try:
        return int(text) if text is not None else 0
    except ValueError:
        return 0


def _flag_value(args: Sequence[str], names: tuple[str, ...]) -> int:
    for i, arg in enumerate(args):
        for name in names:
            if arg == name and i + 1 < len(args):
                return _int(args[i + 1])
            if name.startswith("--") and arg.startswith(name + "="):
                return _int(arg.partition("=")[2])
            if not name.startswith("--") and arg.startswith(name) and arg[len(name) :].isdigit():
                return _int(arg[len(name) :])  # "-w4"
    return 0


def detect_workers(
    environ: Mapping[str, str] | None = None, argv: Sequence[str] | None = None
) -> tuple[int, str]:
    """(worker count, where it was seen); (1, "") when nothing says more than one."""
    env = os.environ if environ is None else environ
    args = list(sys.argv if argv is None else argv)
    gunicorn = any("gunicorn" in os.path.basename(a) for a in args[:2]) or "gunicorn" in env.get(
        "SERVER_SOFTWARE", ""
    )
    count = _flag_value(args, ("--workers", "-w") if gunicorn else ("--workers",))
    if count > 1:
        return count, "workers option in the command line"
    cmd_args = env.get("GUNICORN_CMD_ARGS")
    if cmd_args:
        try:
            count = _flag_value(shlex.split(cmd_args), ("--workers", "-w"))
        except ValueError:
            count = 0
        if count > 1:
            return count, "GUNICORN_CMD_ARGS"
    count = _int(env.get("WEB_CONCURRENCY"))
    if count > 1:
        return count, "WEB_CONCURRENCY"
    return 1, ""


def warn_if_multi_worker(
    environ: Mapping[str, str] | None = None, argv: Sequence[str] | None = None
) -> bool:
    """Log one loud warning per process when the memory backend runs under many workers."""
    global _warned
    if _warned:
        return False
    count, source = detect_workers(environ, argv)
    if count <= 1:
        return False
    _warned = True
    logger.warning(
        "abuseguard: the memory backend keeps every limit inside one process, and %d worker "
        "processes were detected (%s): each worker enforces its own copy, so every limit is "
        "multiplied by %d and scores see 1/%d of the traffic. Use a shared backend: "
        "AbuseGuard(app, backend='redis://host:6379/0').",
        count,
        source,
        count,
        count,
    )
    return True


__all__ = ["detect_workers", "warn_if_multi_worker"]
