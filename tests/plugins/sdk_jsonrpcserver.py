"""A module written for jsonrpcserver 5, served unchanged by plugrpc.serve() (no commands given)."""

from jsonrpcserver import Error, InvalidParams, JsonRpcError, Result, Success, method

from plugrpc import serve


@method
def ping() -> Result:
    return Success("pong")


@method(name="math.divide")
def divide(a, b) -> Result:
    if b == 0:
        return Error(1, "division by zero", {"a": a})
    return Success(a / b)


@method
def needs_positive(n) -> Result:
    if n <= 0:
        return InvalidParams("n must be positive")
    return Success(n)


@method
def no_data() -> Result:
    return Error(2, "no data here")


@method
def null_data() -> Result:
    return Error(3, "null data", None)


@method
def raises() -> Result:
    raise JsonRpcError(-32099, "raised", "some data")


@method
async def async_ping() -> Result:
    return Success("async pong")


if __name__ == "__main__":
    serve()
