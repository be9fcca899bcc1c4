module github.com/plugrpc/plugrpc/go

go 1.21
