"""`python -m bench.soak [--duration S] [--seed N] [--nats]`: the chaos soak; exits 1 if an invariant broke."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

from .report import summary
from .run import Outcome, Settings, install_signal_handlers, soak


def parse(argv: list[str]) -> Settings:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--duration", type=float, default=float(os.environ.get("DURATION") or 600),
                        help="seconds of load (default 600, or $DURATION)")
    parser.add_argument("--seed", type=int, default=None,
                        help="the schedule's seed (default $SEED, else the time): the same seed, the same faults")
    parser.add_argument("--nats", action="store_true", default=os.environ.get("NATS") == "1",
                        help="add a fleet of three routers on a real nats-server (or NATS=1)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else int(os.environ.get("SEED") or int(time.time()) % 100_000)
    if args.duration < 20:
        parser.error("--duration must be at least 20 seconds (baseline, faults and tail)")
    return Settings(duration=args.duration, seed=seed, nats=args.nats)


async def main_async(settings: Settings) -> Outcome:
    task = asyncio.current_task()
    assert task is not None
    install_signal_handlers(asyncio.get_running_loop(), task)
    return await soak(settings)


def main(argv: list[str]) -> int:
    settings = parse(argv)
    print(f"soak: {settings.duration:g} s, seed {settings.seed}{', fleet of 3 on NATS' if settings.nats else ''} "
          f"(replay: make soak DURATION={settings.duration:g} SEED={settings.seed}"
          f"{' NATS=1' if settings.nats else ''})", file=sys.stderr, flush=True)
    outcome = asyncio.run(main_async(settings))
    print(summary(outcome))
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
