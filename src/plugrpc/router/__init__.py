"""The router process: the front socket, routing, the built-ins, the pools to plugins, statistics.

`server.Server` runs a `Config`; `front.FrontProtocol` is a client connection; `routing.Router`
routes calls to the targets of `interfaces.py`: a `pool.PluginPool` per persistent plugin, an
`exec_target.ExecTarget` per core0 binary, and `builtins`. Plugins never import this package.
"""
