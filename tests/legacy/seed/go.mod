module example.com/ovs-plugin

go 1.21

require github.com/zero-os/0-core v0.0.0

replace github.com/zero-os/0-core => ../core0lib
