"""The plugin side, loaded in plugin processes: `sdk.serve` and its connection, the `dispatch`
pipeline, and `discovery` (the `rpc.discover` document). It never imports the router, the
process supervision or the clients: a plugin is not a router."""
