#!/usr/bin/env python3
"""A TLS front for the test broker (noida-db speaks plaintext only), for tests/kafka.rs.

Listens on 127.0.0.1 with TLS (the test's own certificate), forwards each connection's Kafka
frames to the broker's plaintext port, and rewrites the broker's port to its own in the
answers that tell a client where brokers are (Metadata, FindCoordinator, DescribeCluster): a
client then makes every connection through TLS, as to a broker with a TLS listener. It
forwards SASL frames untouched (the broker takes PLAIN) and logs, one line per request, the
API key and, for SaslAuthenticate with PLAIN, the user name, so the test can see who
authenticated. Prints "listening PORT" once ready. Stop it with SIGTERM.

usage: kafka_tls_proxy.py BROKER_PORT CERT KEY LOG
"""

import asyncio
import ssl
import struct
import sys

SASL_AUTHENTICATE = 36
# Answers naming brokers by host and port: Metadata, FindCoordinator, DescribeCluster.
NAMES_BROKERS = {3, 10, 60}
HOST = b"127.0.0.1"


async def read_frame(reader):
    """One length-prefixed Kafka frame (its body), or None at the end of the stream."""
    try:
        head = await reader.readexactly(4)
        (size,) = struct.unpack(">i", head)
        return await reader.readexactly(size)
    except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
        return None


def plain_user(request):
    """The user name of a SaslAuthenticate PLAIN token ("authzid NUL user NUL password"),
    found without parsing the header's version-dependent layout: the token is the request's
    tail."""
    parts = request.split(b"\x00")
    return parts[-2].decode(errors="replace") if len(parts) >= 3 else "?"


class Proxy:
    def __init__(self, broker_port, log):
        self.broker_port = broker_port
        self.own_port = 0
        self.log = log

    def note(self, line):
        self.log.write(line + "\n")
        self.log.flush()

    async def serve(self, client_r, client_w):
        try:
            broker_r, broker_w = await asyncio.open_connection("127.0.0.1", self.broker_port)
        except OSError as e:
            self.note(f"broker unreachable: {e}")
            client_w.close()
            return
        asked = {}  # correlation id -> API key

        async def to_broker():
            while (frame := await read_frame(client_r)) is not None:
                api_key, _version, correlation = struct.unpack(">hhi", frame[:8])
                asked[correlation] = api_key
                line = f"api {api_key}"
                if api_key == SASL_AUTHENTICATE:
                    line += f" user {plain_user(frame)}"
                self.note(line)
                broker_w.write(struct.pack(">i", len(frame)) + frame)
                await broker_w.drain()
            broker_w.close()

        async def to_client():
            old = HOST + struct.pack(">i", self.broker_port)
            new = HOST + struct.pack(">i", self.own_port)
            while (frame := await read_frame(broker_r)) is not None:
                (correlation,) = struct.unpack(">i", frame[:4])
                if asked.pop(correlation, None) in NAMES_BROKERS:
                    frame = frame.replace(old, new)
                client_w.write(struct.pack(">i", len(frame)) + frame)
                await client_w.drain()
            client_w.close()

        try:
            await asyncio.gather(to_broker(), to_client())
        except (ConnectionError, ssl.SSLError, OSError):
            client_w.close()
            broker_w.close()


async def main():
    broker_port, cert, key, log_path = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    proxy = Proxy(broker_port, open(log_path, "a", encoding="utf-8"))
    # A client whose handshake fails (a certificate it does not trust) never reaches `serve`;
    # asyncio reports it to the loop's exception handler, noted in the log.
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, ctx: proxy.note(f"refused: {ctx.get('exception') or ctx.get('message')}"))
    server = await asyncio.start_server(proxy.serve, "127.0.0.1", 0, ssl=context)
    proxy.own_port = server.sockets[0].getsockname()[1]
    print(f"listening {proxy.own_port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
