"""Moved: the plugins the tests run are files in tests/plugins/, their texts in `plugins.sources`.

What is left re-exports the names tests/e2e/test_soak_findings.py imports from here, until it imports
them from `plugins.sources`; nothing else may.
"""

from __future__ import annotations

from plugins.sources import OPS, OPS_EXPORTS

__all__ = ["OPS", "OPS_EXPORTS"]
