module example.com/ovs-plugin

go 1.19
