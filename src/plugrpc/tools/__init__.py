"""The command line (`cli`, thin over `api`), the `plugrpc status` table (`status`) and
`plugrpc new` (`scaffold`). The pytest fixtures are `plugrpc.testing`."""
