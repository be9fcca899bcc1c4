"""Callers of a router (or of a plugin's own socket): `Client` for asyncio code, `BlockingClient`
for scripts, both with the same methods (`raw`, `notify`, `connect`, `close`)."""

from __future__ import annotations

from .aio import Client
from .blocking import BlockingClient

__all__ = ["BlockingClient", "Client"]
