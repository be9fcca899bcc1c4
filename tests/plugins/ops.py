#!/usr/bin/env python3
# Operations: a plugin that can get stuck, stay busy, eat memory or CPU, leave orphans.
import os
import time

import plugrpc

HOARD = []

def pid():
    return os.getpid()

def echo(value=None):
    return value

def hang():
    time.sleep(3600)  # a sync handler that never returns: the loop is stuck

def block(seconds):
    time.sleep(seconds)  # a sync handler that is busy for a while, then answers
    return seconds

def hog(mib):
    for _ in range(mib):
        HOARD.append(bytearray(1 << 20))
    return len(HOARD)

def spin(seconds):
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
    return seconds

def say(text):
    print(text, flush=True)  # noqa: T201 (a plugin's stdout is what the router logs of it)
    return text

def orphan():
    """Double fork: the grandchild (a `sleep`) is orphaned when its parent exits at once."""
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        grandchild = os.fork()
        if grandchild == 0:
            os.execv("/bin/sleep", ["sleep", "60"])
        os.write(w, str(grandchild).encode())
        os._exit(0)
    os.close(w)
    grandchild = int(os.read(r, 64))
    os.close(r)
    os.waitpid(child, 0)
    return grandchild

plugrpc.serve({"pid": pid, "echo": echo, "hang": hang, "block": block, "hog": hog, "spin": spin, "say": say,
               "orphan": orphan})
