"""The cost of the stdio transport: the router in front of one minimal echo plugin, on stdin/stdout or on fd 3.

`plugrpc.serve` serves only the socket the runtime hands over as fd 3, so a stdio plugin of the
SDK's weight is `bench/plugins/line_echo.py` (a selectors loop and orjson, one write per read);
the `router_stdio` row runs it as `transport = "stdio"` (no handshake: it is ready once it runs)
and the `router_line` row runs the same code on fd 3, so the two differ in the transport alone.
The `router` row (the SDK plugin on fd 3) stands beside them.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from .servers import PLUGIN_FILE, PLUGINS, Lab, Router

LINE_ECHO: Final = PLUGINS / "line_echo.py"


def line_image(root: Path, transport: str) -> Path:
    """An image holding the line echo as plugin `bench` (its file named as the SDK plugin's, so the bench charges
    its CPU to `plugin`), on `transport`: "socket" (fd 3) or "stdio"."""
    script = root / PLUGIN_FILE
    shutil.copyfile(LINE_ECHO, script)
    script.chmod(0o755)
    extra = 'transport = "stdio"\nargs = ["stdio"]\n' if transport == "stdio" else ""
    (root / ".plugin.toml").write_text(f'[plugin.bench]\npath = "{PLUGIN_FILE}"\nexports = ["echo"]\n{extra}')
    return root


@dataclass(frozen=True)
class LineRouter(Router):
    """`plugrpc run` on an image of the line echo as `bench`, on `transport`."""

    transport: str = "socket"

    async def image(self, lab: Lab) -> Path:
        return line_image(lab.fresh_dir(f"{self.name}-image"), self.transport)
