"""A response of known length leaves the broker in one write (its head and
body together: broker/ops/protocols.py, OneWriteCycle), read here off a
real socket: the client's count of data segments (TCP_INFO), and the bytes
of keep-alive, pipelined, HEAD and streamed answers."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from tests.e2e.conftest import Account, Server

# struct tcp_info (linux/tcp.h): tcpi_data_segs_in, the segments that
# carried data, is the u32 at byte 152 (since Linux 4.6).
_DATA_SEGS_IN = 152


def data_segments_in(writer: asyncio.StreamWriter) -> int:
    sock = writer.get_extra_info("socket")
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    assert len(info) >= _DATA_SEGS_IN + 4, "this kernel's tcp_info has no tcpi_data_segs_in"
    return int(struct.unpack_from("I", info, _DATA_SEGS_IN)[0])


async def read_response(reader: asyncio.StreamReader, head_request: bool = False
                        ) -> tuple[bytes, dict[bytes, bytes], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status, *lines = head[:-4].split(b"\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(b":", 1) for line in lines)}
    length = 0 if head_request else int(headers.get(b"content-length", b"0"))
    body = await asyncio.wait_for(reader.readexactly(length), 5)
    return status, headers, body


async def connect(server: Server) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = server.url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


async def test_each_answer_of_known_length_arrives_as_one_segment(
        server: Server, account: Account) -> None:
    reader, writer = await connect(server)
    try:
        send = (b"POST /messages/send HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
                b"x-api-key: " + account.key.encode() + b"\r\n")
        job = b'{"recipient": "+16502530000", "message": "hi"}'
        requests = [b"GET /health HTTP/1.1\r\nhost: t\r\n\r\n",  # 200
                    b"GET /nowhere HTTP/1.1\r\nhost: t\r\n\r\n",  # 404 in the error shape
                    send + b"content-length: 2\r\n\r\n{}",  # 400: fields missing
                    send + b"content-length: %d\r\n\r\n%s" % (len(job), job)]  # 400: no phone
        statuses = []
        for request in requests * 5:
            before = data_segments_in(writer)
            writer.write(request)
            status, headers, body = await read_response(reader)
            await asyncio.sleep(0.02)  # anything written apart has arrived by now
            statuses.append(status.split(b" ")[1])
            assert body and headers[b"x-request-id"]
            assert data_segments_in(writer) - before == 1, status
        assert statuses == [b"200", b"404", b"400", b"400"] * 5
    finally:
        writer.close()


async def test_pipelined_requests_get_their_answers_whole_and_in_order(server: Server) -> None:
    reader, writer = await connect(server)
    try:
        writer.write(b"GET /health HTTP/1.1\r\nhost: t\r\n\r\n"
                     b"HEAD /health HTTP/1.1\r\nhost: t\r\n\r\n"
                     b"GET /nowhere HTTP/1.1\r\nhost: t\r\n\r\n"
                     b"GET /health HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
        first = await read_response(reader)
        head = await read_response(reader, head_request=True)
        missing = await read_response(reader)
        last = await read_response(reader)
        assert first[0].endswith(b"200 OK") and b'"status"' in first[2]
        assert head[0].endswith(b"200 OK") and head[1][b"content-length"] == first[1][
            b"content-length"]  # HEAD: the head of the same answer, no body
        assert missing[0].endswith(b"404 Not Found") and b'"statusCode":404' in missing[2]
        assert last[1][b"connection"] == b"close"
        assert await asyncio.wait_for(reader.read(), 5) == b""  # then closed
    finally:
        writer.close()


@pytest.mark.parametrize("path", ["/health", "/openapi.json"])
async def test_a_body_matches_its_content_length(server: Server, path: str) -> None:
    reader, writer = await connect(server)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nhost: t\r\n\r\n".encode())
        status, headers, body = await read_response(reader)
        assert status.endswith(b"200 OK")
        assert len(body) == int(headers[b"content-length"]) > 0
    finally:
        writer.close()
