"""The plugin-side JSON-RPC pipeline behind `plugrpc.serve()`, in the manner of jsonrpcserver.

Small pure functions, no I/O: `resolve` turns the user's commands into a table of `Handler`s
once, at start; `dispatch` turns one parsed message (a request or a batch) into its outcome;
`encode` turns that outcome into a line. The protocol in `sdk.py` only moves bytes.

Per call there is no signature inspection and no validation beyond the envelope
(`wire.request_problem`): the handler is called directly, and only when that raises
`TypeError` does `Signature.bind` tell a params mismatch (-32602) from a bug inside the
handler (-32603). Functions written for jsonrpcserver 5 (returning `Success`/`Error`, i.e.
oslash `Right`/`Left`, or raising `JsonRpcError`) are unwrapped after one type lookup.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import os
import sys

from .. import codes
from ..codes import EXIT_MEMORY
from ..errors import RpcError
from ..wire import ABSENT, dumps, error_line, error_obj, error_response, reply_id, request_problem
from .outgoing import CURRENT, INLINE, Current

TYPE_CHECKING = False  # typing's, without importing typing: a plugin loads these modules (see plugin/plain.py)
if TYPE_CHECKING:
    import inspect
    from collections.abc import Callable, Coroutine, Mapping
    from typing import Any, Final, NoReturn, TypeAlias, TypeVar

    Response: TypeAlias = dict[str, Any]
    Pending: TypeAlias = Coroutine[Any, Any, Response | list[Response] | None]
    Outcome: TypeAlias = Response | list[Response] | Pending | None
    """What `dispatch` returns: a response (or batch of them) ready now, nothing (notifications),
    or a coroutine to run as a task that returns one of those."""
    F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger("plugrpc.dispatch")

_THREADED: Final = "__plugrpc_threaded__"
_CO_COROUTINE: Final = 0x80
"""inspect.CO_COROUTINE: the code flag of an `async def` function."""
_UNSET: Final[Any] = object()
_either: tuple[Any, ...] = ()
"""jsonrpcserver 5's result types (oslash's `Left`, `Right`), once a plugin loaded them: one tuple
lookup per call is all the plain path pays, and a plugin that never uses jsonrpcserver loads none
of it (oslash and its imports cost a plugin ~3 MB)."""


def threaded(fn: F) -> F:
    """Mark a blocking sync command to run in the loop's default executor.

    Plain sync commands run inline on the event loop (the fastest path) and must be quick:
    while one runs, no other call on the plugin makes progress. Use this for commands that
    block on I/O or burn CPU for more than a millisecond or so; async commands need nothing.
    """
    if _is_coroutine_function(fn):
        raise TypeError(f"@threaded is for blocking sync functions; {fn!r} is already async")
    setattr(fn, _THREADED, True)
    return fn


class Handler:
    """One command, resolved once at start: how to call it is never worked out per call."""

    __slots__ = ("name", "fn", "_signature", "coroutine", "threaded", "inline")

    def __init__(self, name: str, fn: Callable[..., Any]) -> None:
        self.name = name
        self.fn = fn
        self._signature: inspect.Signature | None = _UNSET
        self.coroutine = _is_coroutine_function(fn)
        self.threaded = bool(getattr(fn, _THREADED, False))
        self.inline = not (self.coroutine or self.threaded)
        """Called on the loop with its response ready at once: no task, no future."""

    @property
    def signature(self) -> inspect.Signature | None:
        """The command's signature, worked out when first needed (a params mismatch, `rpc.discover`):
        inspect costs every plugin's start ~1.6 MB and milliseconds otherwise."""
        if self._signature is _UNSET:
            import inspect

            try:
                self._signature = inspect.signature(self.fn)
            except (TypeError, ValueError):  # some builtins have none
                self._signature = None
        return self._signature

    def __repr__(self) -> str:
        kind = "async" if self.coroutine else "threaded" if self.threaded else "sync"
        return f"<Handler {self.name} {kind}>"


def resolve(commands: Mapping[str, Callable[..., Any]]) -> dict[str, Handler]:
    """Build the dispatch table from the user's commands, refusing reserved or bad entries."""
    global _either
    either = sys.modules.get("oslash.either")  # loaded with jsonrpcserver, whose results we unwrap
    _either = () if either is None else (either.Left, either.Right)
    table: dict[str, Handler] = {}
    for name, fn in commands.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"command names must be non-empty strings, got {name!r}")
        if name.startswith("rpc."):
            raise ValueError(f"command {name!r}: names starting with 'rpc.' are reserved for JSON-RPC built-ins")
        if not callable(fn):
            raise TypeError(f"command {name!r} is not callable: {fn!r}")
        table[name] = Handler(name, fn)
    return table


def dispatch(table: Mapping[str, Handler], msg: Any) -> Outcome:
    """The outcome of one parsed message: a single request or a batch."""
    if type(msg) is list:
        return dispatch_batch(table, msg)
    return dispatch_one(table, msg)


def dispatch_one(table: Mapping[str, Handler], msg: Any) -> Outcome:
    """Check the envelope, find the handler, and call it (inline when sync).

    The common case, a well-formed call of a sync command with its params as an object, is
    recognised and run right here; everything else is sorted out by `_dispatch_checked`.
    """
    if type(msg) is dict and msg.get("jsonrpc") == "2.0":
        params = msg.get("params")
        method = msg.get("method")
        if type(params) is dict and type(method) is str and "id" in msg:
            handler = table.get(method)
            id = msg["id"]
            kind = type(id)
            if handler is not None and handler.inline and (kind is int or kind is str):
                INLINE.id = id  # for plugrpc.progress (see outgoing.py)
                try:  # `run`, inlined: two frames fewer on every call
                    result = handler.fn(**params)
                except Exception as exc:
                    return {"jsonrpc": "2.0", "error": failure(handler, params, exc), "id": id}
                return success(result, id)
    return _dispatch_checked(table, msg)


def _dispatch_checked(table: Mapping[str, Handler], msg: Any) -> Outcome:
    """`dispatch_one` for any message: the envelope is checked first (-32600 when invalid)."""
    problem = request_problem(msg)
    if problem is not None:
        # JSON-RPC 2.0: an invalid request is answered even without an id (with id null).
        return error_response(reply_id(msg), codes.INVALID_REQUEST, data=problem)
    id = msg.get("id", ABSENT)
    handler = table.get(msg["method"])
    if handler is None:
        return None if id is ABSENT else error_response(id, codes.METHOD_NOT_FOUND, data=msg["method"])
    if handler.inline:
        response = run(handler, msg.get("params"), id)
        return None if id is ABSENT else response
    return run_async(handler, msg.get("params"), id)


def dispatch_batch(table: Mapping[str, Handler], batch: list[Any]) -> Outcome:
    """Dispatch each element; responses come back as one array, notifications left out."""
    if not batch:
        return error_response(None, codes.INVALID_REQUEST, data="an empty batch")
    outcomes = [dispatch_one(table, msg) for msg in batch]
    if any(_is_pending(o) for o in outcomes):
        return _gather_batch(outcomes)
    return _batch_responses(outcomes)


def call(fn: Callable[..., Any], params: Any) -> Any:
    """Params object -> keyword arguments, array -> positional, absent -> none."""
    if params is None:
        return fn()
    if type(params) is dict:
        return fn(**params)
    return fn(*params)


def run(handler: Handler, params: Any, id: Any) -> Response:
    """Call a sync handler and build its response; an exception becomes an error response."""
    INLINE.id = id
    try:
        result = call(handler.fn, params)
    except Exception as exc:
        return {"jsonrpc": "2.0", "error": failure(handler, params, exc), "id": id}
    return success(result, id)


async def run_async(handler: Handler, params: Any, id: Any) -> Response | None:
    """Await an async handler, or run a threaded one in the default executor.

    It runs in a task of its own: the call it serves (for plugrpc.progress) is set in the
    task's context, and copied into the thread of a threaded one.
    """
    current = CURRENT.get()
    if current is not None and current.id is not id:  # an element of a batch
        CURRENT.set(Current(current.conn, id))
    try:
        if handler.threaded:
            import asyncio  # the asyncio engine runs this: it is loaded already

            context = contextvars.copy_context()
            result = await asyncio.get_running_loop().run_in_executor(None, context.run, call, handler.fn, params)
        else:
            result = await call(handler.fn, params)
    except Exception as exc:
        response = {"jsonrpc": "2.0", "error": failure(handler, params, exc), "id": id}
    else:
        response = success(result, id)
    return None if id is ABSENT else response


def success(result: Any, id: Any) -> Response:
    """The response for a value a handler returned; jsonrpcserver results are unwrapped."""
    if type(result) in _either:
        return _unwrap(result, id)
    return {"jsonrpc": "2.0", "result": result, "id": id}


def failure(handler: Handler, params: Any, exc: Exception) -> dict[str, Any]:
    """The `error` member for an exception raised by calling `handler` with `params`."""
    if isinstance(exc, MemoryError):
        out_of_memory(handler)
    if isinstance(exc, RpcError):
        return exc.to_error()
    if isinstance(exc, TypeError):
        mismatch = params_mismatch(handler, params, exc)
        if mismatch is not None:
            return error_obj(codes.INVALID_PARAMS, data=mismatch)
    jsonrpcserver_exceptions = sys.modules.get("jsonrpcserver.exceptions")
    if jsonrpcserver_exceptions is not None and isinstance(exc, jsonrpcserver_exceptions.JsonRpcError):
        return _error_member(exc.code, exc.message, exc.data)
    log.error("command %r raised %s", handler.name, type(exc).__name__, exc_info=exc)
    return error_obj(codes.INTERNAL_ERROR, data=f"{type(exc).__name__}: {exc}")


def out_of_memory(handler: Handler) -> NoReturn:
    """A handler ran out of memory (most likely the manifest's `limits.memory`): a process in that state is
    not worth keeping. Exit at once with systemd's EXIT_MEMORY, which the runtime reads as that limit, and
    let it start a fresh process; the calls in flight fail with -32001."""
    log.critical("command %r ran out of memory; exiting (status %d) to be restarted", handler.name, EXIT_MEMORY)
    logging.shutdown()
    os._exit(EXIT_MEMORY)


def params_mismatch(handler: Handler, params: Any, exc: TypeError) -> str | None:
    """Why `params` do not fit the handler's signature, or None if the TypeError came from inside it.

    Only runs on the error path, so the happy path never pays for `Signature.bind`.
    """
    sig = handler.signature
    if sig is None:
        # A builtin without a signature: its TypeError is about its arguments.
        return str(exc)
    try:
        call(sig.bind, params)
    except TypeError as mismatch:
        return str(mismatch)
    return None


def encode(outcome: Response | list[Response]) -> bytes:
    """A response (or batch) as a line; a result JSON cannot hold becomes -32603."""
    try:
        return dumps(outcome)
    except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
        if isinstance(outcome, list):
            return b"[" + b",".join(encode(response)[:-1] for response in outcome) + b"]\n"
        log.error("response to id %r is not JSON-serializable: %s", outcome["id"], exc)
        return error_line(outcome["id"], codes.INTERNAL_ERROR, data=f"response is not JSON-serializable: {exc}")


def _unwrap(result: Any, id: Any) -> Response:
    """jsonrpcserver 5: `Right(SuccessResult(result))` or `Left(ErrorResult(code, message, data))`."""
    if type(result) is _either[1]:  # Right
        value = result._value
        return {"jsonrpc": "2.0", "result": getattr(value, "result", value), "id": id}
    error = result._error
    return {"jsonrpc": "2.0", "error": _error_member(error.code, error.message, error.data), "id": id}


def _error_member(code: int, message: str, data: Any) -> dict[str, Any]:
    """An `error` member as jsonrpcserver writes it: `data` left out only when it is NODATA."""
    err: dict[str, Any] = {"code": code, "message": message}
    sentinels = sys.modules.get("jsonrpcserver.sentinels")
    if sentinels is None or data is not sentinels.NODATA:
        err["data"] = data
    return err


def _is_pending(outcome: Outcome) -> bool:
    return outcome is not None and type(outcome) is not dict


def _batch_responses(outcomes: list[Any]) -> list[Response] | None:
    """Notifications leave no response; a batch of only notifications gets nothing at all."""
    return [o for o in outcomes if o is not None] or None


async def _gather_batch(outcomes: list[Outcome]) -> list[Response] | None:
    """Run a batch's async calls concurrently, keeping the responses in request order."""
    import asyncio  # the asyncio engine runs this: it is loaded already

    done = iter(await asyncio.gather(*(o for o in outcomes if _is_pending(o))))  # type: ignore[arg-type]
    return _batch_responses([next(done) if _is_pending(o) else o for o in outcomes])


def _is_coroutine_function(fn: Any) -> bool:
    """`async def` functions, partials and methods of them, and objects with an `async def __call__`.

    inspect.iscoroutinefunction's rule, by the code flag, without importing inspect at start.
    """
    return _coroutine_code(fn) or _coroutine_code(type(fn).__call__)


def _coroutine_code(fn: Any) -> bool:
    while True:
        if isinstance(fn, functools.partial):
            fn = fn.func
        elif hasattr(fn, "__func__"):  # a bound method
            fn = fn.__func__
        else:
            break
    code = getattr(fn, "__code__", None)
    return code is not None and bool(getattr(code, "co_flags", 0) & _CO_COROUTINE)
