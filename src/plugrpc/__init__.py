"""plugrpc: plugins as persistent JSON-RPC 2.0 servers behind a multiplexing router."""

from __future__ import annotations
