// Package plugin runs core0 plugins as persistent plugrpc JSON-RPC 2.0 servers.
//
// It keeps the API of core0's base/plugin: a core0 plugin changes only its import path,
// from github.com/zero-os/0-core/base/plugin to github.com/plugrpc/plugrpc/go/plugin.
//
//	func version(args json.RawMessage) (interface{}, error) { return "1.0alpha", nil }
//
//	func main() { plugin.Plugin(plugin.Commands{"version": version}) }
//
// Started by plugrpc (a listening unix socket on fd 3, LISTEN_FDS=1) the binary is a
// persistent server: newline-delimited JSON-RPC 2.0 on every connection, each call in its own
// goroutine, answers in completion order, batches, notifications, and on SIGTERM it finishes
// and answers the calls in flight, then exits 0. Run any other way (by hand, or by core0 itself)
// it behaves as core0's library did, byte for byte: `prog <command> [<args-json>]` prints
// `20:::<json>` and a line `:::` on stdout and exits 0, or prints the error text as a JSON
// string in the same frame and exits 1. One binary serves both runtimes.
//
// What plugrpc adds comes with the context-taking variant, Serve(ContextCommands{...}): a
// call's context is cancelled when its caller goes away; Emit sends events, Progress reports
// on the call being served, Call reaches other plugins through the router, Ready and Status
// speak sd_notify, and a command returns an *Error to choose its JSON-RPC error code.
//
// Direct calls need nothing of the plugin: the package answers the router's rpc.direct, then
// holds that connection to the exports and max_inflight it was given and writes no events on it,
// and answers rpc.ping with the figures of its direct connections.
package plugin
