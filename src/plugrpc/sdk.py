"""`plugrpc.sdk`, where plugins written for earlier releases import `serve` and `threaded` from.

The plugin side lives in `plugrpc.plugin` now; new plugins use `plugrpc.serve` and
`plugrpc.threaded`. This name stays so that those plugins keep running unchanged.
"""

from __future__ import annotations

from .plugin.sdk import serve, threaded

__all__ = ["serve", "threaded"]
