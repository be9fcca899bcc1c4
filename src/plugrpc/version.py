"""plugrpc's version, in a module of its own so that any part can name it without importing the package's
lazy public API (`plugrpc/__init__.py`) and, through it, every other part."""

from __future__ import annotations

__version__ = "0.1.0"
