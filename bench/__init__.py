"""`make bench`: what a plugrpc call costs, side by side with the floor, the old model and the alternatives.

Run as `python -m bench` (see `python -m bench --help` and bench/results/README.md). Every server
under test runs in its own process; this process is the load generator and the orchestrator.
"""
