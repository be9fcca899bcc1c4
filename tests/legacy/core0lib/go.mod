module github.com/zero-os/0-core

go 1.21
