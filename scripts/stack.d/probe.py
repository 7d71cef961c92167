#!/usr/bin/env python3
"""Readiness probes and a tiny CQL shell for scripts/stack (Python standard library only).

  probe.py kafka HOST:PORT          one ApiVersions + Metadata round trip; exit 0 when the broker
                                    answers with itself in the broker list and a controller id.
                                    KAFKA_TLS_CA_FILE set: TLS (an SSL listener), the broker's
                                    certificate verified against that PEM file, with the client
                                    certificate KAFKA_TLS_CERT_FILE + KAFKA_TLS_KEY_FILE if set.
  probe.py cql HOST:PORT [STMT...]  run CQL statements over native protocol v4 and print any rows,
                                    tab-separated, with a header line; exit 0 on success.
                                    Default statement: SELECT release_version FROM system.local
                                    A server that asks for authentication gets SASL PLAIN with
                                    CQL_USERNAME / CQL_PASSWORD from the environment.
                                    CQL_TLS_CA_FILE set: TLS, the server's certificate
                                    verified against that PEM file.
  probe.py cql-file HOST:PORT FILE [STMT...]
                                    the same with the statements of a CQL file (split at each ';'
                                    outside quotes; -- // /* */ comments dropped), after
                                    substituting each ${NAME} with the environment variable NAME
                                    (an unset one is an error), preceded by the STMTs
  probe.py subst FILE               print FILE with each ${NAME} substituted the same way

Exit codes: 0 ok, 1 the server answered with an error, 2 no connection / protocol failure.
"""

import datetime
import os
import re
import socket
import ssl
import struct
import sys
import uuid

TIMEOUT = 10.0


class ServerError(Exception):
    pass


def parse_addr(s):
    host, _, port = s.rpartition(":")
    return host or "127.0.0.1", int(port)


def recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by server")
        buf += chunk
    return bytes(buf)


class Reader:
    def __init__(self, data):
        self.data = data
        self.pos = 0

    def take(self, n):
        if self.pos + n > len(self.data):
            raise ValueError("short frame")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def i8(self):
        return struct.unpack(">b", self.take(1))[0]

    def i16(self):
        return struct.unpack(">h", self.take(2))[0]

    def u16(self):
        return struct.unpack(">H", self.take(2))[0]

    def i32(self):
        return struct.unpack(">i", self.take(4))[0]

    def string(self):  # [string]: u16 length + utf8 (Kafka uses i16 with -1 = null)
        n = self.i16()
        return None if n < 0 else self.take(n).decode("utf-8", "replace")

    def long_string(self):
        n = self.i32()
        return None if n < 0 else self.take(n).decode("utf-8", "replace")

    def bytes_(self):
        n = self.i32()
        return None if n < 0 else self.take(n)


# ---------------------------------------------------------------- Kafka


def kafka_request(sock, api_key, api_version, corr, body):
    client_id = b"hawkeye-stack-probe"
    header = struct.pack(">hhih", api_key, api_version, corr, len(client_id)) + client_id
    msg = header + body
    sock.sendall(struct.pack(">i", len(msg)) + msg)
    size = struct.unpack(">i", recv_exact(sock, 4))[0]
    resp = Reader(recv_exact(sock, size))
    if resp.i32() != corr:
        raise ValueError("correlation id mismatch")
    return resp


def probe_kafka(addr):
    with open_socket(addr, "KAFKA") as sock:
        sock.settimeout(TIMEOUT)
        # ApiVersions v0 (every broker version answers it)
        r = kafka_request(sock, 18, 0, 1, b"")
        err = r.i16()
        if err != 0:
            raise ServerError("ApiVersions error code %d" % err)
        versions = {}
        for _ in range(r.i32()):
            key, lo, hi = r.i16(), r.i16(), r.i16()
            versions[key] = (lo, hi)
        lo, hi = versions.get(3, (0, -1))
        if not lo <= 4 <= hi:
            raise ServerError("broker does not support Metadata v4 (has %d..%d)" % (lo, hi))
        # Metadata v4: topics = [] (no topic metadata, just brokers), allow_auto_topic_creation=false
        r = kafka_request(sock, 3, 4, 2, struct.pack(">ib", 0, 0))
        r.i32()  # throttle_time_ms
        brokers = []
        for _ in range(r.i32()):
            node, host, port, _rack = r.i32(), r.string(), r.i32(), r.string()
            brokers.append("%d@%s:%d" % (node, host, port))
        cluster_id = r.string()
        controller = r.i32()
        if not brokers or controller < 0:
            raise ServerError("no live broker / controller yet (brokers=%s controller=%d)"
                              % (brokers, controller))
        print("kafka ok: cluster %s, brokers %s, controller %d"
              % (cluster_id, " ".join(brokers), controller))


# ---------------------------------------------------------------- CQL (native protocol v4)

OP_ERROR, OP_STARTUP, OP_READY, OP_AUTHENTICATE, OP_QUERY, OP_RESULT = 0, 1, 2, 3, 7, 8
OP_AUTH_RESPONSE, OP_AUTH_SUCCESS = 0x0F, 0x10
CONSISTENCY_ONE = 1


def cql_string(s):
    b = s.encode("utf-8")
    return struct.pack(">H", len(b)) + b


def cql_frame(sock, stream, opcode, body):
    sock.sendall(struct.pack(">BBhBi", 0x04, 0, stream, opcode, len(body)) + body)
    version, flags, rstream, rop, length = struct.unpack(">BBhBi", recv_exact(sock, 9))
    if version & 0x7F != 0x04:
        raise ValueError("unexpected protocol version 0x%02x" % version)
    body = Reader(recv_exact(sock, length))
    if rstream != stream:
        raise ValueError("stream id mismatch")
    if flags & 0x01:
        raise ValueError("compressed frame (no compression was asked for)")
    if flags & 0x02:  # tracing id
        body.take(16)
    if flags & 0x08:  # warnings: [string list]
        for _ in range(body.u16()):
            sys.stderr.write("warning: %s\n" % body.string())
    if flags & 0x04:  # custom payload: [bytes map]
        for _ in range(body.u16()):
            body.string()
            body.bytes_()
    if rop == OP_ERROR:
        code = body.i32()
        raise ServerError("CQL error 0x%04x: %s" % (code, body.string()))
    return rop, body


def read_type(r):
    tid = r.u16()
    if tid == 0x0000:
        return ("custom", r.string())
    if tid in (0x0020, 0x0022):  # list, set
        return (tid, read_type(r))
    if tid == 0x0021:  # map
        return (tid, read_type(r), read_type(r))
    if tid == 0x0030:  # UDT
        r.string()
        r.string()
        return (tid, [(r.string(), read_type(r)) for _ in range(r.u16())])
    if tid == 0x0031:  # tuple
        return (tid, [read_type(r) for _ in range(r.u16())])
    return (tid,)


def decode(t, b):
    if b is None:
        return "null"
    tid = t[0]
    try:
        if tid in (0x0001, 0x000D):  # ascii, varchar
            return b.decode("utf-8", "replace")
        if tid in (0x0002, 0x0005, 0x0009, 0x0013, 0x0014):  # bigint, counter, int, smallint, tinyint
            return str(int.from_bytes(b, "big", signed=True))
        if tid == 0x000E:  # varint
            return str(int.from_bytes(b, "big", signed=True))
        if tid == 0x0004:
            return "true" if b[0] else "false"
        if tid == 0x0007:
            return repr(struct.unpack(">d", b)[0])
        if tid == 0x0008:
            return repr(struct.unpack(">f", b)[0])
        if tid in (0x000C, 0x000F):  # uuid, timeuuid
            return str(uuid.UUID(bytes=b))
        if tid == 0x000B:  # timestamp: ms since epoch
            ms = int.from_bytes(b, "big", signed=True)
            return (datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
                    + datetime.timedelta(milliseconds=ms)).isoformat()
        if tid == 0x0010:  # inet
            return socket.inet_ntop(socket.AF_INET if len(b) == 4 else socket.AF_INET6, b)
        if tid in (0x0020, 0x0022):
            r = Reader(b)
            items = [decode(t[1], r.bytes_()) for _ in range(r.i32())]
            return ("[%s]" if tid == 0x0020 else "{%s}") % ", ".join(items)
        if tid == 0x0021:
            r = Reader(b)
            items = ["%s: %s" % (decode(t[1], r.bytes_()), decode(t[2], r.bytes_()))
                     for _ in range(r.i32())]
            return "{%s}" % ", ".join(items)
    except (ValueError, IndexError, struct.error):
        pass
    return "0x" + b.hex()


def authenticate(sock):
    user, password = os.environ.get("CQL_USERNAME"), os.environ.get("CQL_PASSWORD")
    if not user or password is None:
        raise ServerError("server requires authentication: set CQL_USERNAME and CQL_PASSWORD")
    token = b"\0" + user.encode("utf-8") + b"\0" + password.encode("utf-8")
    op, _ = cql_frame(sock, 1, OP_AUTH_RESPONSE, struct.pack(">i", len(token)) + token)
    return op


def open_socket(addr, prefix):
    """A connection to addr: TLS when PREFIX_TLS_CA_FILE is set (the server checked against
    it), with the client certificate of PREFIX_TLS_CERT_FILE / PREFIX_TLS_KEY_FILE if set."""
    host, port = parse_addr(addr)
    sock = socket.create_connection((host, port), timeout=TIMEOUT)
    ca_file = os.environ.get(prefix + "_TLS_CA_FILE")
    if not ca_file:
        return sock
    try:
        context = ssl.create_default_context(cafile=ca_file)
        cert_file = os.environ.get(prefix + "_TLS_CERT_FILE")
        if cert_file:
            context.load_cert_chain(cert_file, os.environ.get(prefix + "_TLS_KEY_FILE"))
        return context.wrap_socket(sock, server_hostname=host)
    except (OSError, ssl.SSLError):
        sock.close()
        raise


def cql_run(addr, statements):
    with open_socket(addr, "CQL") as sock:
        sock.settimeout(max(TIMEOUT, 30.0))
        op, _ = cql_frame(sock, 1, OP_STARTUP, struct.pack(">H", 1) + cql_string("CQL_VERSION")
                          + cql_string("3.0.0"))
        if op == OP_AUTHENTICATE:
            op = authenticate(sock)
        if op not in (OP_READY, OP_AUTH_SUCCESS):
            raise ValueError("unexpected opcode %d after STARTUP" % op)
        for i, stmt in enumerate(statements):
            q = stmt.encode("utf-8")
            body = struct.pack(">i", len(q)) + q + struct.pack(">HB", CONSISTENCY_ONE, 0)
            op, r = cql_frame(sock, 2 + i, OP_QUERY, body)
            if op != OP_RESULT:
                raise ValueError("unexpected opcode %d after QUERY" % op)
            kind = r.i32()
            if kind == 2:  # Rows
                flags, ncols = r.i32(), r.i32()
                if flags & 0x0002:
                    r.bytes_()  # paging state
                names, types = [], []
                if not flags & 0x0004:  # no_metadata
                    if flags & 0x0001:
                        r.string()
                        r.string()
                    for _ in range(ncols):
                        if not flags & 0x0001:
                            r.string()
                            r.string()
                        names.append(r.string())
                        types.append(read_type(r))
                print("\t".join(names))
                nrows = r.i32()
                for _ in range(nrows):
                    print("\t".join(decode(types[c], r.bytes_()) for c in range(ncols)))
                print("(%d rows)" % nrows)
            elif kind == 3:
                print("USE %s" % r.string())
            elif kind == 5:
                change, target = r.string(), r.string()
                name = r.string()
                if target != "KEYSPACE":
                    name += "." + r.string()
                print("%s %s %s" % (change, target, name))
            else:
                print("OK")


# ---------------------------------------------------------------- files with ${NAME}s


def substitute(path):
    """The text of the file with each ${NAME} replaced by the environment variable NAME."""
    with open(path, encoding="utf-8") as f:
        text = f.read()

    def value(m):
        if m.group(1) not in os.environ:
            raise ServerError("%s: ${%s} is not set" % (path, m.group(1)))
        return os.environ[m.group(1)]

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", value, text)


def cql_statements(text):
    """The statements of a CQL script: split at ';' outside quotes, comments dropped."""
    statements, current, i, n = [], [], 0, len(text)
    while i < n:
        c = text[i]
        if c in "'\"":  # a string or quoted name; a doubled quote stays inside it
            j = i + 1
            while j < n and (text[j] != c or text[j + 1:j + 2] == c):
                j += 2 if text[j] == c else 1
            current.append(text[i:j + 1])
            i = j + 1
        elif text.startswith("$$", i):
            j = text.find("$$", i + 2)
            j = n if j < 0 else j + 2
            current.append(text[i:j])
            i = j
        elif text.startswith("--", i) or text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
        elif c == ";":
            statements.append("".join(current).strip())
            current = []
            i += 1
        else:
            current.append(c)
            i += 1
    statements.append("".join(current).strip())
    return [s for s in statements if s]


def main(argv):
    if len(argv) < 3 or argv[1] not in ("kafka", "cql", "cql-file", "subst"):
        sys.stderr.write(__doc__)
        return 2
    try:
        if argv[1] == "kafka":
            probe_kafka(argv[2])
        elif argv[1] == "subst":
            sys.stdout.write(substitute(argv[2]))
        elif argv[1] == "cql-file":
            if len(argv) < 4:
                sys.stderr.write(__doc__)
                return 2
            cql_run(argv[2], argv[4:] + cql_statements(substitute(argv[3])))
        else:
            cql_run(argv[2], argv[3:] or ["SELECT release_version FROM system.local"])
    except ServerError as e:
        sys.stderr.write("%s: %s\n" % (argv[1], e))
        return 1
    except (OSError, ValueError, struct.error) as e:
        sys.stderr.write("%s: %s: %s\n" % (argv[1], type(e).__name__, e))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
