#!/usr/bin/env python3
# `after` order: each plugin notes when it starts and when its start-up hook is done in $ORDER_LOG
# (O_APPEND: the file's order is the order of events), then says READY=1.
import os
import time

import plugrpc

NAME = os.environ["PLUGRPC_PLUGIN"]

def note(what):
    with open(os.environ["ORDER_LOG"], "a") as f:
        f.write(f"{what} {NAME}\n")

def start_up():
    time.sleep(0.2)
    note("ready")

note("start")
plugrpc.serve({"name": lambda: NAME}, on_start=start_up)
