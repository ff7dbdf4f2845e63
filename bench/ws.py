"""Many idle WebSockets: a minimal echo server (``serve``) and a client that holds N of them (``hold``).

Only what the benchmark needs of RFC 6455: the opening handshake, and small
(< 126 bytes) text frames echoed back, to prove a held connection still works.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import resource
import time

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def accept_key(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# -- server


async def serve_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        key = b""
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-key":
                key = value.strip()
        if not key:
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
            return
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_key(key) + b"\r\n\r\n"
        )
        while True:
            hdr = await reader.readexactly(2)
            length = hdr[1] & 0x7F
            masked = hdr[1] & 0x80
            if length >= 126:
                return  # not needed here
            mask = await reader.readexactly(4) if masked else b"\0\0\0\0"
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(await reader.readexactly(length)))
            opcode = hdr[0] & 0x0F
            if opcode == 8:
                writer.write(b"\x88\x00")
                await writer.drain()
                return
            writer.write(bytes([0x80 | opcode, length]) + payload)
    except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def serve(port: int) -> None:
    server = await asyncio.start_server(serve_one, "127.0.0.1", port, backlog=4096)
    print(f"LISTEN {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


# -- client


class Held:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer


async def open_one(port: int, path: str, sem: asyncio.Semaphore, timeout: float) -> Held | str:
    async with sem:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
            key = base64.b64encode(os.urandom(16))
            writer.write(
                b"GET " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n\r\n"
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        except (TimeoutError, OSError, asyncio.IncompleteReadError) as e:
            return f"{type(e).__name__}: {e}"
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" " or accept_key(key) not in head:
            writer.close()
            return status.decode("latin-1")
        return Held(reader, writer)


async def echo(held: Held, sem: asyncio.Semaphore, timeout: float) -> bool:
    async with sem:
        payload = os.urandom(8).hex().encode()
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        try:
            held.writer.write(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
            frame = await asyncio.wait_for(held.reader.readexactly(2 + len(payload)), timeout)
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            return False
        return frame[2:] == payload


async def hold(port: int, path: str, count: int, concurrency: int, seconds: float, timeout: float) -> dict:
    sem = asyncio.Semaphore(concurrency)
    start = time.monotonic()
    results = await asyncio.gather(*(open_one(port, path, sem, timeout) for _ in range(count)))
    opened = [r for r in results if isinstance(r, Held)]
    errors: dict[str, int] = {}
    for r in results:
        if isinstance(r, str):
            errors[r] = errors.get(r, 0) + 1
    open_seconds = time.monotonic() - start
    print(f"OPEN {len(opened)} {count - len(opened)} {open_seconds:.2f}", flush=True)
    await asyncio.sleep(seconds)
    alive = sum(1 for h in opened if not h.reader.at_eof())
    echoed = await asyncio.gather(*(echo(h, sem, timeout) for h in opened))
    result = {
        "requested": count,
        "opened": len(opened),
        "alive_after_hold": alive,
        "echo_ok": sum(echoed),
        "open_seconds": round(open_seconds, 2),
        "errors": dict(sorted(errors.items(), key=lambda kv: -kv[1])[:5]),
    }
    for h in opened:
        h.writer.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, default=0)
    h = sub.add_parser("hold")
    h.add_argument("--port", type=int, required=True)
    h.add_argument("--path", default="/ws")
    h.add_argument("--count", type=int, default=100)
    h.add_argument("--concurrency", type=int, default=100)
    h.add_argument("--hold", type=float, default=3.0)
    h.add_argument("--timeout", type=float, default=20.0)
    args = parser.parse_args()
    raise_nofile()
    if args.cmd == "serve":
        try:
            asyncio.run(serve(args.port))
        except KeyboardInterrupt:
            pass
        return
    result = asyncio.run(hold(args.port, args.path, args.count, args.concurrency, args.hold, args.timeout))
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
