#!/bin/sh
# Exits at once, every time: a crash loop.
echo "crasher: giving up at start-up" >&2
exit 3
