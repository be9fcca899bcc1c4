#!/usr/bin/env python3
import plugrpc


def version():
    return "1.0alpha"

plugrpc.serve({"version": version})
