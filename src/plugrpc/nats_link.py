"""How routers and callers meet on NATS (docs/design.md, "NATS: beyond one machine"): subjects, URLs, connecting.

Shared by the router's bridge (router/nats_bridge.py) and the client (client/nats.py). Importing
this module does not import nats-py: only `connect()` does, so a caller of a unix socket never
loads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import orjson

from .errors import ConfigError

if TYPE_CHECKING:
    import ssl

    from nats.aio.client import Client as Nats

SCHEMES: Final = ("nats://", "tls://")
"""URL schemes that mean a NATS server (nats-py's own); anything else is a unix socket path."""
SERVICE: Final = "plugrpc"
"""The Services API name every router registers as, and the queue group of its subjects."""
QUEUE: Final = "plugrpc"
CALL: Final = "plugrpc.call."
"""`plugrpc.call.NAME`: one router by name."""
ANY: Final = "plugrpc.any."
"""`plugrpc.any.PLUGIN`: any router that runs PLUGIN (queue group `plugrpc`: NATS picks one)."""
EVENT: Final = "plugrpc.event."
"""`plugrpc.event.ROUTER.PLUGIN.EVENT`: an event a router's plugin emitted, the params of `rpc.event`."""
NO_RESPONDERS: Final = "503"
"""The Status header NATS answers a request with when nobody subscribes to its subject."""
DEADLINE: Final = "Plugrpc-Deadline"
"""The header a call's deadline travels in: unix time in milliseconds, after which nobody waits for its answer."""
PING_INTERVAL: Final = 2.0
"""Seconds between a connection's pings to its NATS server (nats-py's default is 120)."""
MAX_PINGS_OUT: Final = 2
"""Pings unanswered before a connection counts as dead: with PING_INTERVAL, a silent link is noticed in 4-6 s."""
FIRST_CONNECT: Final = 5.0
"""Seconds a caller's first connect may take (twice per server, a second apart, is usually well under it)."""
INSTALL: Final = "NATS support needs nats-py: pip install 'plugrpc[nats]'"


def lacks_nats(exc: ModuleNotFoundError) -> bool:
    """Whether an import failed because nats-py is not installed (not for any other missing module)."""
    return exc.name == "nats" or (exc.name or "").startswith("nats.")


def is_nats_url(target: object) -> bool:
    """Whether a client's target is a NATS URL (the socket path is anything else)."""
    return isinstance(target, str) and target.startswith(SCHEMES)


def servers(url: str) -> list[str]:
    """The server URLs in `url` (several may be given, separated by commas, as for a cluster)."""
    urls = [u.strip() for u in url.split(",") if u.strip()]
    bad = [u for u in urls if not u.startswith(SCHEMES)]
    if not urls or bad:
        raise ConfigError(f"a NATS URL starts with nats:// or tls:// (several: comma-separated), got {url!r}")
    return urls


def redacted(url: str) -> str:
    """`url` fit for logs and error messages: a password or token in it replaced with `***`."""
    return _SECRET.sub(lambda m: f"{m[1]}{m[2] + ':' if m[3] is not None else ''}***@", url)


_SECRET: Final = re.compile(r"(\w+://)([^:/@,]*)(?::([^/@,]*))?@")
"""`scheme://user:password@` or `scheme://token@`."""


def router_name(name: str | None) -> str:
    """NAME of `plugrpc run --nats`: as given, else this host's name (its first label); a NATS token."""
    from .manifest import NAME_RE  # plugin names are tokens too

    if name is None:
        name = socket.gethostname().split(".")[0]
        hint = f"this host's name {name!r} is not a valid router name; pass --name"
    else:
        hint = f"--name must be letters, digits, '_' or '-' (a NATS subject token), got {name!r}"
    if not NAME_RE.fullmatch(name):
        raise ConfigError(hint)
    return name


def call_subject(router: str) -> str:
    return CALL + router


def any_subject(plugin: str) -> str:
    return ANY + plugin


def event_subject(router: str, name: str) -> str:
    """Where router `router` publishes event `name` (`plugin.event`): `plugrpc.event.ROUTER.PLUGIN.EVENT`."""
    return EVENT + router + "." + name


def event_router(subject: str) -> str:
    """The router that published on event subject `subject` (`plugrpc.event.ROUTER.PLUGIN.EVENT`)."""
    return subject[len(EVENT):].partition(".")[0]


def events_subject(router: str | None, pattern: str) -> str:
    """The subject that matches `pattern`'s events, from `router` or (None) from any router."""
    return EVENT + (router or "*") + "." + pattern


def no_responders_reason(subject: str) -> dict[str, str]:
    """`error.data` when nobody answers `subject`: which router or plugin NATS knows nothing of."""
    if subject.startswith(CALL):
        name = subject[len(CALL):]
        return {"router": name, "reason": f"no router named {name!r} is connected to NATS "
                                          "(plugrpc status --nats URL lists those that are)"}
    plugin = subject[len(ANY):]
    return {"plugin": plugin, "reason": f"no router connected to NATS runs plugin {plugin!r}"}


async def services(nc: Nats, verb: str, wait: float, quiet: float = 0.25) -> list[dict[str, Any]]:
    """Every router's answer to the Services API's `$SRV.VERB.plugrpc`: listen for up to `wait` seconds,
    and once answers come, until `quiet` passes without another (NATS's "no responders": none at all)."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    found: list[dict[str, Any]] = []
    try:
        await nc.publish(f"$SRV.{verb}.{SERVICE}", b"", reply=inbox)
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = await sub.next_msg(timeout=left if not found else min(left, quiet))
            except Exception:  # nats-py's timeout: no more answers
                break
            if not msg.data:
                break
            answer = orjson.loads(msg.data)
            if isinstance(answer, dict) and isinstance(answer.get("metadata", {}).get("name"), str):
                found.append(answer)
    finally:
        await sub.unsubscribe()
    return found


def tls_context(ca: str | os.PathLike[str] | None) -> ssl.SSLContext | None:
    """A TLS context that trusts `ca` (a PEM file) on top of the system's, or None for none given."""
    import ssl

    if ca is None:
        return None
    path = Path(ca)
    if not path.is_file():
        raise ConfigError(f"--nats-ca: no such file: {path}")
    return ssl.create_default_context(cafile=os.fspath(path))


PathLike = str | os.PathLike[str]


def _security(urls: list[str], creds: PathLike | None, ca: PathLike | None) -> dict[str, Any]:
    """nats-py's options for a creds file and TLS (checked before anything connects)."""
    options: dict[str, Any] = {}
    if creds is not None:
        if not Path(creds).is_file():
            raise ConfigError(f"--nats-creds: no such file: {creds}")
        options["user_credentials"] = os.fspath(creds)
    tls = tls_context(ca)
    if tls is None and any(u.startswith("tls://") for u in urls):
        import ssl

        tls = ssl.create_default_context()
    if tls is not None:
        options["tls"] = tls
    return options


Callback = Callable[..., Awaitable[None]]


async def connect(url: str, *, creds: str | os.PathLike[str] | None = None, ca: str | os.PathLike[str] | None = None,
                  name: str, forever: bool, error_cb: Callback, disconnected_cb: Callback | None = None,
                  reconnected_cb: Callback | None = None, ping_interval: float = PING_INTERVAL,
                  max_pings_out: int = MAX_PINGS_OUT, **options: Any) -> Nats:
    """A nats-py connection to `url` that reconnects by itself, every second, for as long as it is open.

    It pings the server every `ping_interval` seconds; once `max_pings_out` are unanswered at the next
    ping, the link is dead (a partition or a stopped server says nothing) and it reconnects.

    Credentials come from the URL (`nats://user:password@host`, `nats://token@host`) or a creds
    file; TLS from `tls://` (with `ca` to trust a private CA). With `forever`, the first connect
    keeps trying too (a router that starts before NATS joins when it comes up); a caller's first
    connect tries each server twice, a second apart, then fails.
    """
    try:
        from nats.aio.client import Client as Nats
    except ModuleNotFoundError as exc:
        if not lacks_nats(exc):
            raise
        raise ConfigError(INSTALL) from None
    urls = servers(url)
    kwargs: dict[str, Any] = {
        "name": name, "error_cb": error_cb, "allow_reconnect": True, "reconnect_time_wait": 1,
        "max_reconnect_attempts": -1 if forever else 1, "connect_timeout": 2, "ping_interval": ping_interval,
        "max_outstanding_pings": max_pings_out, **options,
    }
    if disconnected_cb is not None:
        kwargs["disconnected_cb"] = disconnected_cb
    if reconnected_cb is not None:
        kwargs["reconnected_cb"] = reconnected_cb
    kwargs.update(_security(urls, creds, ca))
    nc = Nats()
    try:
        if forever:
            await nc.connect(urls, **kwargs)
        else:  # nats-py can wait for ever on a TLS handshake the server gave up on
            await asyncio.wait_for(nc.connect(urls, **kwargs), FIRST_CONNECT)
    except BaseException:  # refused, or cancelled while retrying: stop what it started
        with contextlib.suppress(Exception):
            await nc.close()
        raise
    if not forever:
        nc.options["max_reconnect_attempts"] = -1  # connected once: from now on, keep reconnecting
    return nc

