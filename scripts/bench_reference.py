"""The faithful bare-path reference for ``make bench``: the least a machida-compatible runner does.

Two processes, nothing else: no acknowledgements, metrics, logging, recovery
files or backpressure. Process ``a`` accepts the sender, parses whole socket
reads and calls the application's own objects exactly as the API requires
(``payload_length`` and ``decode`` per frame, ``compute_multi``, ``partition``,
then ``compute`` and ``encode`` for key 0); it forwards key-1 values to
process ``b`` as packed u64s and writes one buffer per read to its sink.
Process ``b`` runs ``compute`` and ``encode`` for key 1 and writes its own sink
connection. The benchmark compares the runner with this in the same run.

Usage: bench_reference.py a IN_PORT OUT_PORT PEER_PORT
       bench_reference.py b PEER_PORT OUT_PORT
"""

from __future__ import annotations

import asyncio
import struct
import sys

sys.path[0:0] = [""]
from machida.app.loader import prepare_sys_path  # noqa: E402

prepare_sys_path()
import sequence_window as app  # noqa: E402

U64 = struct.Struct(">Q")


class SourceA(asyncio.Protocol):
    """Process a: the source handler, key 0's state, and the forward to b."""

    def __init__(self, sink: asyncio.Transport, peer: asyncio.Transport) -> None:
        self.sink, self.peer = sink, peer
        self.buf = b""
        self.decoder = app.Decoder()
        self.step = app.MaybeOneToMany()
        self.partition = app.SequencePartitionFunction()
        self.compute = app.ObserveNewValue()
        self.encoder = app.Encoder()
        self.state = app.SequenceWindowStateBuilder().build()

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        pos, end, out, fwd = 0, len(buf), [], []
        payload_length, decode = self.decoder.payload_length, self.decoder.decode
        compute_multi, partition = self.step.compute_multi, self.partition.partition
        compute, encode, state, pack = (
            self.compute.compute,
            self.encoder.encode,
            self.state,
            U64.pack,
        )
        while end - pos >= 4:
            n = payload_length(buf[pos : pos + 4])
            if pos + 4 + n > end:
                break
            value = decode(buf[pos + 4 : pos + 4 + n])
            pos += 4 + n
            for msg in compute_multi(value) or ():
                if partition(msg) == 0:
                    out.append(encode(compute(msg, state)[0]))
                else:
                    fwd.append(pack(msg))
        self.buf = buf[pos:]
        if out:
            self.sink.write(b"".join(out))
        if fwd:
            self.peer.write(b"".join(fwd))


class PeerB(asyncio.Protocol):
    """Process b: key 1's state, fed packed u64s by a."""

    def __init__(self, sink: asyncio.Transport) -> None:
        self.sink = sink
        self.buf = b""
        self.compute = app.ObserveNewValue()
        self.encoder = app.Encoder()
        self.state = app.SequenceWindowStateBuilder().build()

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        usable = len(buf) - len(buf) % 8
        compute, encode, state = self.compute.compute, self.encoder.encode, self.state
        out = [encode(compute(v, state)[0]) for (v,) in U64.iter_unpack(buf[:usable])]
        self.buf = buf[usable:]
        if out:
            self.sink.write(b"".join(out))


async def connect(port: int) -> asyncio.Transport:
    loop = asyncio.get_running_loop()
    while True:
        try:
            transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
            return transport
        except OSError:
            await asyncio.sleep(0.05)


async def main(argv: list[str]) -> None:
    loop = asyncio.get_running_loop()
    if argv[0] == "a":
        in_port, out_port, peer_port = map(int, argv[1:4])
        sink, peer = await connect(out_port), await connect(peer_port)
        await loop.create_server(lambda: SourceA(sink, peer), "127.0.0.1", in_port)
    else:
        peer_port, out_port = map(int, argv[1:3])
        sink = await connect(out_port)
        await loop.create_server(lambda: PeerB(sink), "127.0.0.1", peer_port)
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))  # runs until the benchmark stops it with SIGTERM
