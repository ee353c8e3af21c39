#!/usr/bin/env python3
"""A TLS and SASL front for the test broker (noida-db speaks plaintext only and takes any
credentials), for tests/kafka.rs.

Listens on 127.0.0.1 with TLS (the test's own certificate), forwards each connection's Kafka
frames to the broker's plaintext port, and rewrites the broker's port to its own in the
answers that tell a client where brokers are (Metadata, FindCoordinator, DescribeCluster): a
client then makes every connection through TLS, as to a broker with a TLS listener.

It does SASL itself, as a secured broker does: SaslHandshake and SaslAuthenticate are answered
here, never forwarded, for the mechanisms PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802,
RFC 7677) against the USER:PASSWORD pairs it is given; a wrong password or an unknown user is
answered with SASL_AUTHENTICATION_FAILED and the connection closed, and nothing but
ApiVersions and SASL is forwarded before a connection has authenticated. It logs one line per
request ("api KEY") and one per authentication ("sasl MECHANISM USER ok|refused"), so a test
can see who authenticated how.

With --deny=TOPIC it plays an ACL that refuses the topic: Metadata answers name it with
TOPIC_AUTHORIZATION_FAILED, as a broker does whether the topic exists or not. With
--deny-group=GROUP, one that refuses the consumer group: FindCoordinator for it is answered
here with GROUP_AUTHORIZATION_FAILED (a broker checks Describe on the group there, before
anything else the group is asked); with --deny-group-read=GROUP, one that lets the principal
describe the group but not read it: OffsetCommit and TxnOffsetCommit for it are answered
here with GROUP_AUTHORIZATION_FAILED for every partition. With --deny-txn=PREFIX, one that refuses the
transactional ids starting with PREFIX: InitProducerId for them is answered with
TRANSACTIONAL_ID_AUTHORIZATION_FAILED (Write on the transactional id, checked there). With
--absent=TOPIC it plays brokers that lack the topic and do not create topics: Metadata answers
name it with UNKNOWN_TOPIC_OR_PARTITION (so no client ever produces to it).

SIGUSR1 plays a password rotated on the brokers: every user's password changes and every
client connection is closed, so clients must authenticate again (and are refused); SIGUSR2
puts the passwords back.

Prints "listening PORT" once ready. Stop it with SIGTERM.

usage: kafka_tls_proxy.py BROKER_PORT CERT KEY LOG [--deny=TOPIC ...] [--deny-group=GROUP ...]
                         [--deny-group-read=GROUP ...] [--deny-txn=PREFIX ...]
                         [--absent=TOPIC ...] USER:PASSWORD [...]
"""

import asyncio
import base64
import hashlib
import hmac
import os
import signal
import ssl
import struct
import sys

API_VERSIONS = 18
SASL_HANDSHAKE = 17
SASL_AUTHENTICATE = 36
# Kafka's error codes for the answers made here.
UNSUPPORTED_SASL_MECHANISM = 33
ILLEGAL_SASL_STATE = 34
SASL_AUTHENTICATION_FAILED = 58
TOPIC_AUTHORIZATION_FAILED = 29
UNKNOWN_TOPIC_OR_PARTITION = 3
GROUP_AUTHORIZATION_FAILED = 30
TRANSACTIONAL_ID_AUTHORIZATION_FAILED = 53
METADATA = 3
FIND_COORDINATOR = 10
OFFSET_COMMIT = 8
TXN_OFFSET_COMMIT = 28
# OffsetCommit's first flexible version.
OFFSET_COMMIT_FLEXIBLE = 8
INIT_PRODUCER_ID = 22
# InitProducerId's first flexible version (librdkafka sends FindCoordinator up to version 2,
# none flexible).
INIT_PRODUCER_ID_FLEXIBLE = 2
# Metadata's first flexible version (compact strings: a one-byte length + 1 for short names).
METADATA_FLEXIBLE = 9
# Answers naming brokers by host and port: Metadata, FindCoordinator, DescribeCluster.
NAMES_BROKERS = {3, 10, 60}
HOST = b"127.0.0.1"
SCRAM_HASHES = {"SCRAM-SHA-256": hashlib.sha256, "SCRAM-SHA-512": hashlib.sha512}
MECHANISMS = ["PLAIN", *SCRAM_HASHES]
SCRAM_ITERATIONS = 4096


async def read_frame(reader):
    """One length-prefixed Kafka frame (its body), or None at the end of the stream."""
    try:
        head = await reader.readexactly(4)
        (size,) = struct.unpack(">i", head)
        return await reader.readexactly(size)
    except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
        return None


def kafka_string(s):
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def request_body(frame):
    """A request's body: after api key, version, correlation id and client id (request
    header v1; SASL's versions 0 and 1, the ones librdkafka sends, are not flexible)."""
    (client_id_len,) = struct.unpack(">h", frame[8:10])
    return frame[10 + max(client_id_len, 0):]


class Sasl:
    """One connection's SASL exchange."""

    def __init__(self, users):
        self.users = users  # () -> the user -> password dict in force
        self.mechanism = None
        self.user = None
        self.authenticated = False
        self.scram = None  # (client-first-bare, server-first, salted password) between steps

    def handshake(self, body):
        (n,) = struct.unpack(">h", body[:2])
        self.mechanism = body[2:2 + n].decode(errors="replace")
        error = 0 if self.mechanism in MECHANISMS else UNSUPPORTED_SASL_MECHANISM
        offered = b"".join(kafka_string(m) for m in MECHANISMS)
        return struct.pack(">hi", error, len(MECHANISMS)) + offered

    def authenticate(self, body, version):
        """(answer body, verdict): verdict is None while a SCRAM exchange goes on, else
        True or False (then the connection is closed after the answer)."""
        (n,) = struct.unpack(">i", body[:4])
        token = body[4:4 + n]
        if self.mechanism == "PLAIN":
            reply, verdict = self.plain(token)
        elif self.mechanism in SCRAM_HASHES:
            reply, verdict = self.scram_step(token)
        else:
            return self.answer(version, ILLEGAL_SASL_STATE, "no handshake", b""), False
        if verdict is False:
            return self.answer(version, SASL_AUTHENTICATION_FAILED,
                               "Authentication failed: Invalid username or password", b""), False
        self.authenticated = verdict is True
        return self.answer(version, 0, None, reply), verdict

    @staticmethod
    def answer(version, error, message, auth_bytes):
        out = struct.pack(">h", error)
        out += struct.pack(">h", -1) if message is None else kafka_string(message)
        out += struct.pack(">i", len(auth_bytes)) + auth_bytes
        if version >= 1:
            out += struct.pack(">q", 0)  # session lifetime: none
        return out

    def plain(self, token):
        parts = token.split(b"\x00")
        if len(parts) != 3:
            return b"", False
        self.user = parts[1].decode(errors="replace")
        return b"", self.users().get(self.user) == parts[2].decode(errors="replace")

    def scram_step(self, token):
        digest = SCRAM_HASHES[self.mechanism]
        text = token.decode(errors="replace")
        if self.scram is None:
            # client-first: gs2 header ("n,," or "n,a=authzid,") then "n=user,r=nonce".
            bare = text.split(",", 2)[2] if text.count(",") >= 2 else ""
            fields = dict(f.split("=", 1) for f in bare.split(",") if "=" in f)
            self.user = fields.get("n", "?").replace("=2C", ",").replace("=3D", "=")
            password = self.users().get(self.user)
            if password is None or "r" not in fields:
                return b"", False
            salt = os.urandom(16)
            salted = hashlib.pbkdf2_hmac(digest().name, password.encode(), salt, SCRAM_ITERATIONS)
            first = "r={}{},s={},i={}".format(fields["r"], base64.b64encode(os.urandom(18)).decode(),
                                              base64.b64encode(salt).decode(), SCRAM_ITERATIONS)
            self.scram = (bare, first, salted)
            return first.encode(), None
        bare, first, salted = self.scram
        without_proof, _, proof = text.rpartition(",p=")
        auth_message = f"{bare},{first},{without_proof}".encode()
        client_key = hmac.new(salted, b"Client Key", digest).digest()
        stored_key = digest(client_key).digest()
        signature = hmac.new(stored_key, auth_message, digest).digest()
        try:
            given = base64.b64decode(proof)
        except ValueError:
            return b"", False
        nonce = dict(f.split("=", 1) for f in without_proof.split(",") if "=" in f).get("r")
        recovered = bytes(a ^ b for a, b in zip(given, signature))
        if nonce != first.split(",")[0][2:] or len(given) != len(signature) \
                or digest(recovered).digest() != stored_key:
            return b"", False
        server_key = hmac.new(salted, b"Server Key", digest).digest()
        verifier = hmac.new(server_key, auth_message, digest).digest()
        return b"v=" + base64.b64encode(verifier), True


def deny_topics(frame, version, topics, error=TOPIC_AUTHORIZATION_FAILED):
    """A Metadata answer with each of `topics` refused: the topic entry's error code (the two
    bytes before its name, in every version) set to `error`."""
    for topic in topics:
        name = topic.encode()
        size = bytes([len(name) + 1]) if version >= METADATA_FLEXIBLE else struct.pack(">h", len(name))
        at = frame.find(size + name)
        if at >= 2:
            frame = frame[:at - 2] + struct.pack(">h", error) + frame[at:]
    return frame


def refused_coordinator(frame, version, groups):
    """FindCoordinator's answer for a group in `groups` (key type 0; version 0 has only
    groups), refused as an ACL would; None for any other key or version."""
    if version > 2:
        return None
    body = request_body(frame)
    (n,) = struct.unpack(">h", body[:2])
    key = body[2:2 + n].decode(errors="replace")
    key_type = body[2 + n] if version >= 1 else 0
    if key_type != 0 or key not in groups:
        return None
    if version == 0:
        return struct.pack(">hi", GROUP_AUTHORIZATION_FAILED, -1) + kafka_string("") + struct.pack(">i", -1)
    return (struct.pack(">ih", 0, GROUP_AUTHORIZATION_FAILED) + kafka_string("Group authorization failed.")
            + struct.pack(">i", -1) + kafka_string("") + struct.pack(">i", -1))


class Reader:
    """Reads a request body's fields, compact (flexible versions) or classic."""

    def __init__(self, data, flexible):
        self.data = data
        self.at = 0
        self.flexible = flexible

    def take(self, n):
        out = self.data[self.at:self.at + n]
        self.at += n
        return out

    def int(self, fmt):
        (v,) = struct.unpack(fmt, self.take(struct.calcsize(fmt)))
        return v

    def uvarint(self):
        shift = value = 0
        while True:
            b = self.take(1)[0]
            value |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return value

    def string(self):
        n = self.uvarint() - 1 if self.flexible else self.int(">h")
        return None if n < 0 else self.take(n).decode(errors="replace")

    def count(self):
        return self.uvarint() - 1 if self.flexible else self.int(">i")

    def tags(self):
        if self.flexible:
            for _ in range(self.uvarint()):
                self.uvarint()
                self.take(self.uvarint())


def uvarint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def committed_partitions(r, with_epoch):
    """The (topic, [partition]) list of an OffsetCommit or TxnOffsetCommit request."""
    topics = []
    for _ in range(r.count()):
        name = r.string()
        partitions = []
        for _ in range(r.count()):
            partitions.append(r.int(">i"))
            r.int(">q")  # offset
            if with_epoch:
                r.int(">i")  # leader epoch
            r.string()  # metadata
            r.tags()
        r.tags()
        topics.append((name, partitions))
    return topics


def refused_offset_commit(frame, version, groups):
    """OffsetCommit's answer (versions 3 to 9, the ones with a throttle time) for a group in
    `groups`: every partition it commits refused with GROUP_AUTHORIZATION_FAILED, as a broker
    does for a principal without Read on the group; else None."""
    if not 3 <= version <= 9:
        return None
    flexible = version >= OFFSET_COMMIT_FLEXIBLE
    r = Reader(request_body(frame), flexible)
    r.tags()  # the request header's (flexible versions)
    if r.string() not in groups:
        return None
    r.int(">i")  # generation
    r.string()  # member id
    if version >= 7:
        r.string()  # group instance id
    if version <= 4:
        r.int(">q")  # retention
    return refused_partitions(committed_partitions(r, version >= 6), flexible)


def refused_txn_offset_commit(frame, version, groups):
    """TxnOffsetCommit's answer (versions 0 to 3) for a group in `groups`, refused as
    `refused_offset_commit`'s (an exactly_once transaction's offsets need Read on the group
    too); else None."""
    if not 0 <= version <= 3:
        return None
    flexible = version >= 3
    r = Reader(request_body(frame), flexible)
    r.tags()
    r.string()  # transactional id
    if r.string() not in groups:
        return None
    r.int(">q")  # producer id
    r.int(">h")  # producer epoch
    if version >= 3:
        r.int(">i")  # generation
        r.string()  # member id
        r.string()  # group instance id
    return refused_partitions(committed_partitions(r, version >= 2), flexible)


def refused_partitions(topics, flexible):
    """A commit's answer (throttle time, then per topic its partitions, each refused with
    GROUP_AUTHORIZATION_FAILED), with the response header's tagged fields when flexible."""

    def string(s):
        b = s.encode()
        return uvarint(len(b) + 1) + b if flexible else kafka_string(s)

    def count(n):
        return uvarint(n + 1) if flexible else struct.pack(">i", n)

    tags = b"\x00" if flexible else b""
    out = tags + struct.pack(">i", 0) + count(len(topics))
    for name, partitions in topics:
        out += string(name) + count(len(partitions))
        for p in partitions:
            out += struct.pack(">ih", p, GROUP_AUTHORIZATION_FAILED) + tags
        out += tags
    return out + tags


def refused_producer_id(frame, version, prefixes):
    """InitProducerId's answer (with its header's tagged fields when flexible) for a
    transactional id starting with one of `prefixes`, refused as an ACL would; else None."""
    body = request_body(frame)
    if version >= INIT_PRODUCER_ID_FLEXIBLE:
        # The request header's tagged fields (none: one zero byte), then a compact nullable
        # string: its length + 1 as an unsigned varint (ids here are shorter than 127 bytes).
        n = body[1] - 1
        tid = body[2:2 + n].decode(errors="replace") if n >= 0 else None
    else:
        (n,) = struct.unpack(">h", body[:2])
        tid = body[2:2 + n].decode(errors="replace") if n >= 0 else None
    if tid is None or not any(tid.startswith(p) for p in prefixes):
        return None
    answer = struct.pack(">ihqh", 0, TRANSACTIONAL_ID_AUTHORIZATION_FAILED, -1, -1)
    if version >= INIT_PRODUCER_ID_FLEXIBLE:
        return b"\x00" + answer + b"\x00"
    return answer


class Proxy:
    def __init__(self, broker_port, log, users, denied, denied_groups=(), denied_txn=(), absent=(),
                 denied_group_reads=()):
        self.broker_port = broker_port
        self.own_port = 0
        self.log = log
        self.given = users
        self.users = users
        self.denied = denied
        self.denied_groups = list(denied_groups)
        self.denied_txn = list(denied_txn)
        self.absent = list(absent)
        self.denied_group_reads = list(denied_group_reads)
        self.clients = set()

    def rotate(self):
        self.users = {u: p + "-rotated" for u, p in self.given.items()}
        self.note("passwords rotated")
        for w in list(self.clients):
            w.close()

    def restore(self):
        self.users = self.given
        self.note("passwords restored")

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
        asked = {}  # correlation id -> (API key, version)
        sasl = Sasl(lambda: self.users)
        self.clients.add(client_w)
        # The client's writer is shared by the broker's answers and this front's own.
        writing = asyncio.Lock()

        async def to_client_frame(frame):
            async with writing:
                client_w.write(struct.pack(">i", len(frame)) + frame)
                await client_w.drain()

        async def to_broker():
            while (frame := await read_frame(client_r)) is not None:
                api_key, version, correlation = struct.unpack(">hhi", frame[:8])
                self.note(f"api {api_key}")
                if api_key == SASL_HANDSHAKE:
                    await to_client_frame(struct.pack(">i", correlation)
                                          + sasl.handshake(request_body(frame)))
                    continue
                if api_key == SASL_AUTHENTICATE:
                    answer, verdict = sasl.authenticate(request_body(frame), version)
                    await to_client_frame(struct.pack(">i", correlation) + answer)
                    if verdict is not None:
                        self.note(f"sasl {sasl.mechanism} {sasl.user} "
                                  + ("ok" if verdict else "refused"))
                    if verdict is False:
                        break
                    continue
                if not sasl.authenticated and api_key != API_VERSIONS:
                    self.note(f"unauthenticated request {api_key}: closed")
                    break
                refusal = None
                if api_key == FIND_COORDINATOR and self.denied_groups:
                    refusal = refused_coordinator(frame, version, self.denied_groups)
                if api_key == OFFSET_COMMIT and self.denied_group_reads:
                    refusal = refused_offset_commit(frame, version, self.denied_group_reads)
                if api_key == TXN_OFFSET_COMMIT and self.denied_group_reads:
                    refusal = refused_txn_offset_commit(frame, version, self.denied_group_reads)
                if api_key == INIT_PRODUCER_ID and self.denied_txn:
                    refusal = refused_producer_id(frame, version, self.denied_txn)
                if refusal is not None:
                    self.note(f"acl refused api {api_key}")
                    await to_client_frame(struct.pack(">i", correlation) + refusal)
                    continue
                asked[correlation] = (api_key, version)
                broker_w.write(struct.pack(">i", len(frame)) + frame)
                await broker_w.drain()
            broker_w.close()
            client_w.close()

        async def to_client():
            old = HOST + struct.pack(">i", self.broker_port)
            new = HOST + struct.pack(">i", self.own_port)
            while (frame := await read_frame(broker_r)) is not None:
                (correlation,) = struct.unpack(">i", frame[:4])
                api_key, version = asked.pop(correlation, (None, 0))
                if api_key in NAMES_BROKERS:
                    frame = frame.replace(old, new)
                if api_key == METADATA and self.denied:
                    frame = deny_topics(frame, version, self.denied)
                if api_key == METADATA and self.absent:
                    frame = deny_topics(frame, version, self.absent, UNKNOWN_TOPIC_OR_PARTITION)
                await to_client_frame(frame)
            client_w.close()

        try:
            await asyncio.gather(to_broker(), to_client())
        except (ConnectionError, ssl.SSLError, OSError):
            client_w.close()
            broker_w.close()
        finally:
            self.clients.discard(client_w)


async def main():
    broker_port, cert, key, log_path = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    rest = sys.argv[5:]
    denied = [a.removeprefix("--deny=") for a in rest if a.startswith("--deny=")]
    denied_groups = [a.removeprefix("--deny-group=") for a in rest if a.startswith("--deny-group=")]
    denied_group_reads = [a.removeprefix("--deny-group-read=") for a in rest
                          if a.startswith("--deny-group-read=")]
    denied_txn = [a.removeprefix("--deny-txn=") for a in rest if a.startswith("--deny-txn=")]
    absent = [a.removeprefix("--absent=") for a in rest if a.startswith("--absent=")]
    users = dict(a.split(":", 1) for a in rest if not a.startswith("--"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    proxy = Proxy(broker_port, open(log_path, "a", encoding="utf-8"), users, denied,
                  denied_groups, denied_txn, absent, denied_group_reads)
    # A client whose handshake fails (a certificate it does not trust) never reaches `serve`;
    # asyncio reports it to the loop's exception handler, noted in the log.
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, ctx: proxy.note(f"refused: {ctx.get('exception') or ctx.get('message')}"))
    server = await asyncio.start_server(proxy.serve, "127.0.0.1", 0, ssl=context)
    proxy.own_port = server.sockets[0].getsockname()[1]
    loop.add_signal_handler(signal.SIGUSR1, proxy.rotate)
    loop.add_signal_handler(signal.SIGUSR2, proxy.restore)
    print(f"listening {proxy.own_port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
