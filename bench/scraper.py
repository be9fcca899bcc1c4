"""`python -m bench.scraper PATH SECONDS`: scrape a router's `--metrics unix:PATH` every SECONDS until SIGTERM.

What a Prometheus server does (every 15 s by default), much more often, so the router row with
metrics and pings on pays for its scrapes in the same windows as every other row is measured.
Each scrape is checked (status 200, a plugrpc_calls family): a metrics endpoint that broke would
make the row fail, not look cheap.
"""

from __future__ import annotations

import asyncio
import sys

from .baselines import until_signalled


async def scrape(path: str) -> None:
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    if not answer.startswith(b"HTTP/1.1 200 OK") or b"plugrpc_calls_total" not in answer:
        raise SystemExit(f"bad scrape from {path}: {answer[:200]!r}")


async def main(path: str, every: float) -> None:
    stop = asyncio.Event()
    waiter = asyncio.ensure_future(until_signalled(stop))
    while not stop.is_set():
        await scrape(path)
        try:
            await asyncio.wait_for(stop.wait(), every)
        except TimeoutError:
            pass
    await waiter


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2])))
