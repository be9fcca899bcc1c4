"""What both engines of `plugrpc.serve` do the same way at start and at the end."""

from __future__ import annotations

import contextlib
import logging
import os

from .. import sdnotify

TYPE_CHECKING = False  # typing's, without importing typing: a plugin loads these modules (see plugin/plain.py)
if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from typing import Final

    from .dispatch import Handler

log = logging.getLogger("plugrpc.sdk")

FLUSH_TIMEOUT: Final = 5.0
"""Seconds a connection gets at shutdown to take its last responses before it is aborted."""


@contextlib.contextmanager
def start_up_failure() -> Iterator[None]:
    """Around `on_start`: a failure ends the plugin (exit status 1), so the runtime's policy restarts it."""
    try:
        yield
    except Exception:
        log.exception("on_start failed; exiting")
        raise SystemExit(1) from None


def announce(table: Mapping[str, Handler]) -> None:
    """Serving now: say so in the log, and READY=1 on $NOTIFY_SOCKET if there is one (a runtime that
    cannot hear it is logged, not fatal)."""
    n = sum(1 for name in table if not name.startswith("rpc."))
    log.info("serving %d command%s (pid %d)", n, "" if n == 1 else "s", os.getpid())
    try:
        sdnotify.notify("READY=1")
    except OSError as exc:
        log.warning("cannot say READY=1 on $NOTIFY_SOCKET (%s): %s", os.environ.get("NOTIFY_SOCKET"), exc)
