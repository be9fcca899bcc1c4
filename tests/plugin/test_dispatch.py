"""plugrpc.dispatch: the pure pipeline, grouped by function. No sockets, no processes."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import warnings
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plugrpc import codes
from plugrpc.errors import PluginUnavailable, RpcError
from plugrpc.plugin.dispatch import Handler, _dispatch_checked, dispatch, dispatch_one, encode, resolve, threaded

from util import NOTIFY, req

with warnings.catch_warnings():  # jsonrpcserver 5.0.9 calls the deprecated importlib.resources.read_text
    warnings.simplefilter("ignore", DeprecationWarning)
    from jsonrpcserver import Error, InvalidParams, JsonRpcError, Success


def note(method: str, params: Any = None) -> dict[str, Any]:
    return req(method, params, id=NOTIFY)


def add(a: int, b: int = 0) -> int:
    return a + b


def kwonly(*, name: str) -> str:
    return name


def posonly(a: int, /) -> int:
    return a


def fail() -> None:
    raise ValueError("boom")


def inner_type_error() -> int:
    return len(5)  # type: ignore[arg-type]


async def aadd(a: int, b: int = 0) -> int:
    await asyncio.sleep(0)
    return a + b


async def afail() -> None:
    await asyncio.sleep(0)
    raise TypeError("inside")


@threaded
def whoami() -> int:
    return threading.get_ident()


class AsyncCallable:
    async def __call__(self, x: int) -> int:
        return x


TABLE = resolve(
    {
        "add": add,
        "kwonly": kwonly,
        "posonly": posonly,
        "fail": fail,
        "inner_type_error": inner_type_error,
        "aadd": aadd,
        "afail": afail,
        "whoami": whoami,
        "max": max,  # a builtin without a signature
        "plugin_error": lambda: (_ for _ in ()).throw(PluginUnavailable(codes.PLUGIN_UNAVAILABLE, "gone", "x")),
        "own_error": lambda: (_ for _ in ()).throw(RpcError(4000, "custom", {"k": [1]})),
        "object": lambda: object(),
        "success": lambda x: Success(x),
        "error": lambda: Error(1, "bad", {"why": "because"}),
        "error_nodata": lambda: Error(2, "no data"),
        "error_nulldata": lambda: Error(3, "null data", None),
        "invalid": lambda: InvalidParams("n must be positive"),
        "raises_jsonrpcerror": lambda: (_ for _ in ()).throw(JsonRpcError(-32099, "raised", "d")),
        "asuccess": AsyncCallable(),
    }
)


def result(outcome: Any) -> Any:
    assert type(outcome) is dict and "error" not in outcome, outcome
    return outcome["result"]


def error(outcome: Any) -> dict[str, Any]:
    assert type(outcome) is dict and "result" not in outcome, outcome
    return outcome["error"]  # type: ignore[no-any-return]


async def settle(outcome: Any) -> Any:
    """The final outcome: awaited when dispatch handed back a coroutine."""
    assert asyncio.iscoroutine(outcome), outcome
    return await outcome


class TestResolve:
    def test_kinds_are_resolved_once(self) -> None:
        assert TABLE["add"].inline and not TABLE["add"].coroutine
        assert TABLE["aadd"].coroutine and not TABLE["aadd"].inline
        assert TABLE["whoami"].threaded and not TABLE["whoami"].inline
        assert TABLE["asuccess"].coroutine
        assert Handler("p", functools.partial(aadd, 1)).coroutine
        assert TABLE["max"].signature is None
        assert repr(TABLE["whoami"]) == "<Handler whoami threaded>"

    def test_reserved_names_are_refused(self) -> None:
        with pytest.raises(ValueError, match=r"'rpc\.discover'.*reserved"):
            resolve({"rpc.discover": add})

    def test_bad_entries_are_refused(self) -> None:
        with pytest.raises(TypeError, match="not callable"):
            resolve({"x": 5})  # type: ignore[dict-item]
        with pytest.raises(TypeError, match="non-empty strings"):
            resolve({"": add})

    def test_threaded_refuses_async_functions(self) -> None:
        with pytest.raises(TypeError, match="already async"):
            threaded(aadd)


class TestParams:
    def test_object_array_and_absent(self) -> None:
        assert result(dispatch(TABLE, req("add", {"a": 2, "b": 3}))) == 5
        assert result(dispatch(TABLE, req("add", [2, 3]))) == 5
        assert result(dispatch(TABLE, req("add", [2]))) == 2
        assert result(dispatch(TABLE, req("max", [1, 7, 3]))) == 7

    @pytest.mark.parametrize(
        ("method", "params", "why"),
        [
            ("add", None, "missing a required argument: 'a'"),
            ("add", {"b": 1}, "missing a required argument: 'a'"),
            ("add", {"a": 1, "c": 2}, "got an unexpected keyword argument 'c'"),
            ("add", [1, 2, 3], "too many positional arguments"),
            ("kwonly", ["x"], "too many positional arguments"),
            ("posonly", {"a": 1}, "'a' parameter is positional only"),
        ],
    )
    def test_mismatch_is_invalid_params_naming_the_argument(self, method: str, params: Any, why: str) -> None:
        err = error(dispatch(TABLE, req(method, params)))
        assert err["code"] == codes.INVALID_PARAMS
        assert err["message"] == "Invalid params"
        assert why in err["data"]

    def test_type_error_inside_the_handler_is_internal(self, caplog: pytest.LogCaptureFixture) -> None:
        err = error(dispatch(TABLE, req("inner_type_error")))
        assert err["code"] == codes.INTERNAL_ERROR
        assert err["data"] == "TypeError: object of type 'int' has no len()"
        assert "Traceback" in caplog.text

    def test_builtin_without_signature_mismatch_is_invalid_params(self) -> None:
        err = error(dispatch(TABLE, req("max", [])))
        assert err["code"] == codes.INVALID_PARAMS
        assert "max" in err["data"]


class TestErrors:
    def test_exception_is_internal_error_logged_with_traceback(self, caplog: pytest.LogCaptureFixture) -> None:
        with caplog.at_level(logging.ERROR, logger="plugrpc.dispatch"):
            err = error(dispatch(TABLE, req("fail", id=9)))
        assert err == {"code": codes.INTERNAL_ERROR, "message": "Internal error", "data": "ValueError: boom"}
        [record] = caplog.records
        assert "'fail'" in record.getMessage()
        assert record.exc_info is not None and record.exc_info[0] is ValueError

    def test_rpc_error_keeps_code_message_data(self) -> None:
        assert error(dispatch(TABLE, req("own_error"))) == {"code": 4000, "message": "custom", "data": {"k": [1]}}
        assert error(dispatch(TABLE, req("plugin_error")))["code"] == codes.PLUGIN_UNAVAILABLE

    def test_unknown_method(self) -> None:
        assert dispatch(TABLE, req("nope", id="x")) == {
            "jsonrpc": "2.0",
            "error": {"code": codes.METHOD_NOT_FOUND, "message": "Method not found", "data": "nope"},
            "id": "x",
        }

    @pytest.mark.parametrize(
        ("msg", "id"),
        [
            ({"jsonrpc": "1.0", "method": "add", "id": 5}, 5),
            ({"jsonrpc": "2.0", "method": 1, "id": "a"}, "a"),
            ({"jsonrpc": "2.0", "method": "add", "params": 3, "id": None}, None),
            ({"jsonrpc": "2.0", "method": "add", "id": [1]}, None),
            ({"jsonrpc": "2.0", "method": "add", "params": None}, None),
            ("a string", None),
            (5, None),
        ],
    )
    def test_invalid_request(self, msg: Any, id: Any) -> None:
        outcome = dispatch(TABLE, msg)
        assert error(outcome)["code"] == codes.INVALID_REQUEST
        assert outcome["id"] == id  # type: ignore[index]

    def test_notifications_get_nothing_even_on_error(self) -> None:
        for method in ("add", "fail", "nope"):
            assert dispatch(TABLE, note(method, [1])) is None
        assert dispatch(TABLE, req("add", [1], id=None)) == {"jsonrpc": "2.0", "result": 1, "id": None}


class TestJsonrpcserverCompat:
    def test_success_unwrapped(self) -> None:
        assert dispatch(TABLE, req("success", [[1, 2]])) == {"jsonrpc": "2.0", "result": [1, 2], "id": 1}

    def test_error_with_and_without_data(self) -> None:
        assert error(dispatch(TABLE, req("error"))) == {"code": 1, "message": "bad", "data": {"why": "because"}}
        assert error(dispatch(TABLE, req("error_nodata"))) == {"code": 2, "message": "no data"}
        assert error(dispatch(TABLE, req("error_nulldata"))) == {"code": 3, "message": "null data", "data": None}

    def test_invalid_params_result(self) -> None:
        assert error(dispatch(TABLE, req("invalid"))) == {
            "code": codes.INVALID_PARAMS,
            "message": "Invalid params",
            "data": "n must be positive",
        }

    def test_raised_jsonrpcerror(self) -> None:
        assert error(dispatch(TABLE, req("raises_jsonrpcerror"))) == {"code": -32099, "message": "raised", "data": "d"}

    async def test_async_success(self) -> None:
        table = resolve({"a": AsyncCallable(), "s": lambda: None})
        assert result(await settle(dispatch(table, req("a", [4])))) == 4


class TestAsync:
    async def test_async_handler_returns_a_coroutine(self) -> None:
        assert result(await settle(dispatch(TABLE, req("aadd", {"a": 1, "b": 2})))) == 3

    async def test_async_mismatch_and_errors(self) -> None:
        err = error(await settle(dispatch(TABLE, req("aadd", {"z": 1}))))
        assert err["code"] == codes.INVALID_PARAMS and "'a'" in err["data"]
        err = error(await settle(dispatch(TABLE, req("afail"))))
        assert err == {"code": codes.INTERNAL_ERROR, "message": "Internal error", "data": "TypeError: inside"}

    async def test_async_notification_runs_but_answers_nothing(self) -> None:
        assert await settle(dispatch(TABLE, note("aadd", [1]))) is None

    async def test_threaded_runs_in_the_executor(self) -> None:
        assert result(await settle(dispatch(TABLE, req("whoami")))) != threading.get_ident()

    async def test_cancellation_is_not_turned_into_an_error(self) -> None:
        started = asyncio.Event()

        async def forever() -> None:
            started.set()
            await asyncio.sleep(3600)

        task = asyncio.ensure_future(settle(dispatch(resolve({"f": forever}), req("f"))))
        await asyncio.wait_for(started.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


class TestBatch:
    def test_sync_batch_in_order_without_notifications(self) -> None:
        outcome = dispatch(TABLE, [req("add", [1], 1), note("add", [2]), req("nope", None, 2), {"bad": 1}])
        assert type(outcome) is list
        assert [r["id"] for r in outcome] == [1, 2, None]
        assert outcome[0]["result"] == 1
        assert outcome[1]["error"]["code"] == codes.METHOD_NOT_FOUND
        assert outcome[2]["error"]["code"] == codes.INVALID_REQUEST

    def test_all_notifications_get_nothing(self) -> None:
        assert dispatch(TABLE, [note("add", [1]), note("fail")]) is None

    def test_empty_batch_is_one_invalid_request(self) -> None:
        outcome = dispatch(TABLE, [])
        assert type(outcome) is dict and error(outcome)["code"] == codes.INVALID_REQUEST and outcome["id"] is None

    async def test_batch_with_async_calls_is_gathered_in_order(self) -> None:
        outcome = await settle(dispatch(TABLE, [req("aadd", [1], "a"), req("add", [2], "b"), note("aadd", [3])]))
        assert outcome == [
            {"jsonrpc": "2.0", "result": 1, "id": "a"},
            {"jsonrpc": "2.0", "result": 2, "id": "b"},
        ]

    async def test_batch_of_async_notifications_gets_nothing(self) -> None:
        assert await settle(dispatch(TABLE, [note("aadd", [1])])) is None


class TestEncode:
    def test_a_line(self) -> None:
        assert encode(dispatch(TABLE, req("add", [1]))) == b'{"jsonrpc":"2.0","result":1,"id":1}\n'  # type: ignore[arg-type]

    def test_unserializable_result_is_internal_error(self, caplog: pytest.LogCaptureFixture) -> None:
        line = encode(dispatch(TABLE, req("object", id=3)))  # type: ignore[arg-type]
        msg = orjson.loads(line)
        assert msg["id"] == 3 and msg["error"]["code"] == codes.INTERNAL_ERROR
        assert "not JSON-serializable" in msg["error"]["data"]
        assert "not JSON-serializable" in caplog.text

    def test_unserializable_result_in_a_batch_spoils_only_its_own_response(self) -> None:
        line = encode(dispatch(TABLE, [req("object", id=1), req("add", [5], 2)]))  # type: ignore[arg-type]
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        first, second = orjson.loads(line)
        assert first["error"]["code"] == codes.INTERNAL_ERROR and first["id"] == 1
        assert second == {"jsonrpc": "2.0", "result": 5, "id": 2}


# --- the inline path and the checked path give the same answer ---------------------------------

MIXED = resolve({"add": add, "kwonly": kwonly, "posonly": posonly, "fail": fail, "aadd": aadd,
                 "inner": inner_type_error, "mine": lambda: (_ for _ in ()).throw(RpcError(7, "mine", [1]))})
SCALARS = st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False) | st.text(max_size=3)
PARAMS = (SCALARS | st.lists(SCALARS, max_size=3)
          | st.dictionaries(st.sampled_from(["a", "b", "name", "x"]), SCALARS, max_size=3))
REQUESTS = st.fixed_dictionaries(
    {"jsonrpc": st.sampled_from(["2.0", "2.0", "2.0", "1.0"]),
     "method": st.sampled_from(["add", "kwonly", "posonly", "fail", "aadd", "inner", "mine", "nope", "rpc.x"])
     | SCALARS},
    optional={"params": PARAMS, "id": st.integers(-3, 3) | st.text(max_size=2) | st.none() | st.floats(allow_nan=False)
              | st.booleans() | st.lists(st.integers(), max_size=1)},
)


def settled(outcome: Any) -> Any:
    """An outcome with its coroutine, if it is one, run to its answer."""
    if asyncio.iscoroutine(outcome):
        return asyncio.run(outcome)
    return outcome


@settings(max_examples=500, deadline=None)
@given(msg=REQUESTS | SCALARS)
def test_the_inline_path_answers_every_request_as_the_checked_path_does(msg: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an unawaited coroutine of a refused message
        assert settled(dispatch_one(MIXED, msg)) == settled(_dispatch_checked(MIXED, msg))
