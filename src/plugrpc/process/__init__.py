"""Plugin processes, run by the router: the supervisor's state machine (`supervisor`), the
mechanics of one child process (`child`: fd 3, log pipes, stopping), core0 exec mode
(`execmode`), the environment a plugin gets (`env`), its recent output (`logbook`), the
runtime directory of sockets (`runtime_dir`) and the watchdog that outlives a killed router
(`reaper`). Plugins never import this package.
"""
