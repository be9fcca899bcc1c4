#!/usr/bin/env python3
# Every kind of handler the SDK knows, for fuzzing it: params of any shape reach all of them.
import asyncio

import plugrpc
from plugrpc.errors import RpcError


def echo(*args, **kwargs):
    return kwargs if kwargs else list(args)

def add(a, b=0):
    return a + b

def kwonly(*, name, shout=False):
    return name.upper() if shout else name

async def aecho(value=None):
    await asyncio.sleep(0)
    return value

def boom(*args, **kwargs):
    raise ValueError("boom")

def refuse(*args, **kwargs):
    raise RpcError(-32000, "refused", {"args": list(args), "kwargs": kwargs})

def unserializable(*args, **kwargs):
    return object()

def huge(*args, **kwargs):
    return 2 ** 100

def deep(depth=300):
    value = []
    for _ in range(min(int(depth), 1000)):
        value = [value]
    return value

plugrpc.serve({"echo": echo, "add": add, "kwonly": kwonly, "aecho": aecho, "boom": boom, "refuse": refuse,
               "unserializable": unserializable, "huge": huge, "deep": deep})
