"""Moved: the reliability suite's plugins are files in tests/plugins/ (`plugins.sources`), its helpers
(`SLOW`, `FULL`, `figure`, `rss_mib`, ...) are in `util`.

What is left re-exports the name tests/e2e/test_soak.py imports from here, until it imports it from
`util`; nothing else may.
"""

from __future__ import annotations

from util import SLOW

__all__ = ["SLOW"]
