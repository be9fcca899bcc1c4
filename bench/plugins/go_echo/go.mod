module github.com/plugrpc/plugrpc/bench/plugins/go_echo

go 1.21

require github.com/plugrpc/plugrpc/go v0.0.0-00010101000000-000000000000

replace github.com/plugrpc/plugrpc/go => ../../../go
