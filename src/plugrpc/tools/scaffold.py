"""`plugrpc new NAME`: a plugin skeleton that runs and passes its test as written.

It writes three things into an image directory: `plugins/NAME.py` (a `plugrpc.serve` plugin
with one documented command), a `[plugin.NAME]` entry appended to `.plugin.toml` (created if
missing; existing text and comments are kept), and `tests/test_NAME.py`, which starts the
image with the `plugrpc.testing` fixtures and calls the plugin. Everything is checked before
anything is written, so a refusal leaves the directory as it was.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ..errors import ManifestError
from ..manifest import MANIFEST_NAME, NAME_RE, RESERVED_NAMES

PLUGIN_TEMPLATE: Final = '''\
#!/usr/bin/env python3
"""The {name} plugin: a persistent JSON-RPC 2.0 server that `plugrpc run` starts and supervises.

Every command callers may reach is listed under `exports` in .plugin.toml. Try it:

    plugrpc run --root path/to/image
    plugrpc call {name}.hello '{{"name": "Ada"}}'
"""

from __future__ import annotations

import plugrpc


def hello(name: str = "world") -> str:
    """Greet someone by name.

    The signature and this docstring are what `rpc.discover` reports; params given as a JSON
    object become keyword arguments, an array positional ones.
    """
    return f"Hello, {{name}}!"


if __name__ == "__main__":
    # Async commands (`async def`) run concurrently; a blocking sync one should be marked
    # with `@plugrpc.threaded` so it runs in a thread instead of holding up the others.
    plugrpc.serve({{"hello": hello}})
'''

MANIFEST_TEMPLATE: Final = """\
[plugin.{name}]
path = "/plugins/{name}.py"
exports = ["hello"]
"""

TEST_TEMPLATE: Final = '''\
"""Tests for the {name} plugin: the image runs for real, with the plugrpc.testing fixtures.

Run them with `python -m pytest` on this file or its directory.
"""

from __future__ import annotations

from pathlib import Path

IMAGE = Path(__file__).resolve().parents[1]
"""The image root: the directory holding .plugin.toml."""


def test_hello(plugrpc_client):
    client = plugrpc_client(IMAGE)  # starts `plugrpc run` on the image; stopped after the test
    assert client.raw("{name}.hello", {{"name": "Ada"}}) == "Hello, Ada!"
    assert client.raw("{name}.hello", ["Bo"]) == "Hello, Bo!"
    assert client.raw("{name}.hello") == "Hello, world!"
'''


@dataclass(frozen=True)
class Scaffold:
    """What `new_plugin` wrote."""

    name: str
    root: Path
    plugin: Path
    test: Path
    manifest: Path
    manifest_created: bool


def new_plugin(name: str, directory: str | os.PathLike[str] = ".") -> Scaffold:
    """Write plugin `name`'s skeleton, manifest entry and test into the image at `directory`.

    Raises `ManifestError` for a name the manifest would refuse, one it already declares, or a
    manifest that is not valid TOML; `FileExistsError` rather than overwrite a file.
    """
    root = Path(directory)
    manifest = root / MANIFEST_NAME
    if not NAME_RE.fullmatch(name):
        raise ManifestError("plugin names may use only letters, digits, '_' and '-'", plugin=name)
    if name in RESERVED_NAMES:
        raise ManifestError(f"the name {name!r} is reserved for the router's built-in methods", plugin=name)
    existing = _read_manifest(manifest, name)
    plugin = root / "plugins" / f"{name}.py"
    test = root / "tests" / f"test_{name.replace('-', '_')}.py"
    for path in (plugin, test):
        if path.exists() or path.is_symlink():
            raise FileExistsError(f"{path} already exists; not overwriting it")

    plugin.parent.mkdir(parents=True, exist_ok=True)
    plugin.write_text(PLUGIN_TEMPLATE.format(name=name))
    plugin.chmod(0o755)
    test.parent.mkdir(parents=True, exist_ok=True)
    test.write_text(TEST_TEMPLATE.format(name=name))
    entry = MANIFEST_TEMPLATE.format(name=name)
    if existing is None:
        manifest.write_text(entry)
    else:
        separator = "" if not existing else "\n" if existing.endswith("\n") else "\n\n"
        with manifest.open("a", encoding="utf-8") as f:
            f.write(separator + entry)
    return Scaffold(name, root, plugin, test, manifest, manifest_created=existing is None)


def _read_manifest(manifest: Path, name: str) -> str | None:
    """The manifest's text (None if there is none), refused if it is broken or declares `name`."""
    try:
        text = manifest.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"invalid TOML, not adding to it: {exc}", file=str(manifest)) from exc
    plugins = doc.get("plugin", {})
    if isinstance(plugins, dict) and name in plugins:
        raise ManifestError("already declared", file=str(manifest), plugin=name)
    return text
