"""The external channel both engines serve (machida/external.py): what each message does."""

from __future__ import annotations

import asyncio
import socket

import pytest

from machida.external import NOT_HANDLED, dispatch, serve_external
from machida.wire import external
from machida.wire.external import CLEAN_SHUTDOWN, PRINT, ROTATE_LOG


class Engine:
    """An engine's side: what it was asked, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def clean_shutdown(self, reason: str) -> None:
        self.calls.append(("clean_shutdown", reason))

    def rotate_log(self, worker: str, reply) -> None:
        self.calls.append(("rotate_log", worker))
        reply(b"rotating " + worker.encode())


class NoRotation:
    """An engine without the RotateLog request."""

    def clean_shutdown(self, reason: str) -> None:
        pass


def run(engine, msg_id: int, text: str) -> list[bytes]:
    replies: list[bytes] = []
    dispatch(engine, msg_id, text, replies.append)
    return replies


def test_print_is_echoed_on_the_console(capsys):
    engine = Engine()
    assert run(engine, PRINT, "hi there") == []
    assert capsys.readouterr().out == "$$$ ExternalPrint: hi there $$$\n"
    assert engine.calls == []


@pytest.mark.parametrize(("text", "line"), [
    ("", "External Clean Shutdown received."),
    ("bye", "External Clean Shutdown received: bye"),
])  # fmt: skip
def test_clean_shutdown_is_acknowledged_then_handed_to_the_engine(capsys, text, line):
    engine = Engine()
    order: list[str] = []

    def reply(data: bytes) -> None:
        order.append(f"reply {data!r} after {len(engine.calls)} call(s)")

    dispatch(engine, CLEAN_SHUTDOWN, text, reply)
    assert order == [f"reply {external.encode(CLEAN_SHUTDOWN)!r} after 0 call(s)"]
    assert engine.calls == [("clean_shutdown", text)]
    assert capsys.readouterr().out == line + "\n"


def test_a_request_goes_to_the_engine_method_that_handles_it(capsys):
    engine = Engine()
    assert run(engine, ROTATE_LOG, "worker-2") == [b"rotating worker-2"]  # its answer, if any
    assert engine.calls == [("rotate_log", "worker-2")]
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("msg_id", [ROTATE_LOG, 99, 0])
def test_a_request_the_engine_lacks_is_not_handled(capsys, msg_id):
    assert run(NoRotation(), msg_id, "x") == []
    assert capsys.readouterr().out == NOT_HANDLED + "\n"


def test_the_channel_answers_on_its_connection_and_closes_on_a_bad_frame(capsys):
    async def scenario() -> tuple[bytes, bytes]:
        engine = Engine()
        server = await serve_external(engine, "w1", ("127.0.0.1", 0))
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(external.encode(CLEAN_SHUTDOWN, "now") + b"\x00\x00\x00\x01\x00")
        answer = await asyncio.wait_for(reader.read(100), 10)
        rest = await asyncio.wait_for(reader.read(100), 10)  # b"": closed after the bad frame
        writer.close()
        server.close()
        await server.wait_closed()
        assert engine.calls == [("clean_shutdown", "now")]
        return answer, rest

    answer, rest = asyncio.run(scenario())
    assert (answer, rest) == (external.encode(CLEAN_SHUTDOWN), b"")
    out, err = capsys.readouterr()
    assert "w1 external: listening on 127.0.0.1:" in out
    assert "ERROR: external connection from 127.0.0.1:" in err and "connection closed" in err


def test_a_taken_address_is_one_bind_error_naming_it():
    from machida.errors import BindError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(BindError) as err:
            asyncio.run(serve_external(Engine(), "w1", ("127.0.0.1", port)))
    assert (
        str(err.value)
        == f"unable to listen on 127.0.0.1:{port} for external: Address already in use"
    )
