#!/usr/bin/env python3
"""An MCP server with one trivial tool, `echo(message)` returning `message`: the `mcp` package's `MCPServer` on
its stdin and stdout, as published servers are written (the bench.mcp rows)."""

from mcp.server.mcpserver import MCPServer

app = MCPServer("bench")


@app.tool()
def echo(message: str) -> str:
    """Return the message."""
    return message


if __name__ == "__main__":
    app.run()
