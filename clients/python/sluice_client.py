"""A small Sluice client in Python, written from the .proto files in proto/ alone.

The stubs are generated from proto/ when this module is imported (grpcio-tools), so the
client always matches the API it talks to. It shows what any-language clients need:

- admin calls, whose errors carry a gRPC status and a `sluice-code` trailer;
- a produce stream: many requests in flight, answered by id; each answer maps every record
  (by its index in the request) to its partition and offset;
- a fetch stream under the credit rules: the client grants bytes, each response says what it
  used (`charged_bytes`), and the server sends data only while the client's credit is left;
- a consumer-group member: join, take the assignment, acknowledge it, heartbeat, commit.

Run it from the repository root:  python clients/python/sluice_client.py 127.0.0.1:7070
"""

import os
import queue
import subprocess
import sys
import tempfile
import threading

import grpc

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def _generate():
    out = tempfile.mkdtemp(prefix="sluice-py-")
    protos = sorted(
        os.path.join("sluice", "v1", f)
        for f in os.listdir(os.path.join(ROOT, "proto", "sluice", "v1"))
        if f.endswith(".proto")
    )
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", os.path.join(ROOT, "proto"),
         "--python_out", out, "--grpc_python_out", out, *protos],
        check=True,
    )
    sys.path.insert(0, out)


_generate()

from sluice.v1 import admin_pb2, admin_pb2_grpc  # noqa: E402
from sluice.v1 import broker_pb2, broker_pb2_grpc  # noqa: E402
from sluice.v1 import common_pb2  # noqa: E402
from sluice.v1 import groups_pb2, groups_pb2_grpc  # noqa: E402

EARLIEST = -2
LATEST = -1


class SluiceError(Exception):
    """A refused call: the gRPC status code, Sluice's stable code and the sentence."""

    def __init__(self, code, sluice_code, message, retriable=False):
        super().__init__(f"{message} (sluice code {sluice_code}, {code})")
        self.code, self.sluice_code, self.message, self.retriable = code, sluice_code, message, retriable

    @classmethod
    def from_rpc(cls, e):
        trailers = dict(e.trailing_metadata() or ())
        return cls(e.code(), int(trailers.get("sluice-code", 0)), e.details())

    @classmethod
    def from_proto(cls, err):
        return cls(grpc.StatusCode.UNKNOWN, err.sluice_code, err.message, err.retriable)


class CreditViolation(AssertionError):
    """The server sent data while the client had no credit left."""


def _call(fn, req):
    try:
        return fn(req)
    except grpc.RpcError as e:
        raise SluiceError.from_rpc(e) from None


class _Requests:
    """A request stream fed from another thread; `close()` ends it."""

    _END = object()

    def __init__(self):
        self._q = queue.Queue()

    def send(self, msg):
        self._q.put(msg)

    def close(self):
        self._q.put(self._END)

    def __iter__(self):
        while True:
            m = self._q.get()
            if m is self._END:
                return
            yield m


class Client:
    def __init__(self, target):
        opts = [("grpc.max_receive_message_length", 80 << 20), ("grpc.max_send_message_length", 80 << 20)]
        self.channel = grpc.insecure_channel(target, options=opts)
        self.admin = admin_pb2_grpc.AdminStub(self.channel)
        self.broker = broker_pb2_grpc.BrokerStub(self.channel)
        self.groups = groups_pb2_grpc.GroupsStub(self.channel)

    def close(self):
        self.channel.close()

    # --- admin -----------------------------------------------------------------------------

    def create_topic(self, name, partitions, replication_factor=1, config=None):
        req = admin_pb2.CreateTopicRequest(
            name=name, partitions=partitions, replication_factor=replication_factor, config=config or {})
        return _call(self.admin.CreateTopic, req).topic

    def describe_topic(self, name):
        return _call(self.admin.DescribeTopic, admin_pb2.DescribeTopicRequest(name=name)).topic

    def list_topics(self):
        return list(_call(self.admin.ListTopics, admin_pb2.ListTopicsRequest()).topics)

    def list_nodes(self):
        return list(_call(self.admin.ListNodes, admin_pb2.ListNodesRequest()).nodes)

    # --- produce ---------------------------------------------------------------------------

    def produce(self, topic, records, per_request=100, acks=common_pb2.ACKS_ALL,
                compression=common_pb2.COMPRESSION_NONE):
        """Sends `records` ((key, value) pairs) in requests of `per_request`, all in flight on
        one stream; returns (partition, offset) for each record, in the order given."""
        reqs, chunks = [], []
        for i in range(0, len(records), per_request):
            chunk = records[i:i + per_request]
            rid = len(reqs) + 1
            reqs.append(broker_pb2.ProduceRequest(
                id=rid, topic=topic, acks=acks, compression=compression,
                records=[common_pb2.Record(key=k, value=v) for k, v in chunk]))
            chunks.append(i)
        placed = [None] * len(records)
        try:
            for resp in self.broker.Produce(iter(reqs)):
                if resp.HasField("error"):
                    raise SluiceError.from_proto(resp.error)
                first = chunks[resp.id - 1]
                for p in resp.partitions:
                    if p.HasField("error"):
                        raise SluiceError.from_proto(p.error)
                    for n, index in enumerate(p.record_indexes):
                        placed[first + index] = (p.partition, p.base_offset + n)
        except grpc.RpcError as e:
            raise SluiceError.from_rpc(e) from None
        missing = [i for i, x in enumerate(placed) if x is None]
        if missing:
            raise AssertionError(f"{len(missing)} records were never acknowledged")
        return placed

    # --- fetch -----------------------------------------------------------------------------

    def fetch(self, topic, offsets, max_bytes, plain=True, one_shot=False):
        """Reads `offsets` ({partition: offset}) with `max_bytes` of credit, yielding each
        response. Credit is counted exactly: every response's `charged_bytes` comes off what
        is left; data arriving with nothing left raises CreditViolation. Unless `one_shot`,
        whatever a response used is granted back, so at most `max_bytes` is outstanding.
        `self.stats` holds the totals."""
        start = broker_pb2.FetchStart(
            topic=topic, max_bytes=max_bytes, plain_records=plain,
            partitions=[broker_pb2.FetchPartition(partition=p, offset=o) for p, o in offsets.items()])
        requests = _Requests()
        requests.send(broker_pb2.FetchRequest(start=start))
        if one_shot:
            requests.close()
        remaining = max_bytes
        self.stats = {"granted": max_bytes, "charged": 0, "largest": 0, "responses": 0}
        call = self.broker.Fetch(iter(requests))
        try:
            for resp in call:
                if resp.HasField("error"):
                    raise SluiceError.from_proto(resp.error)
                charged = resp.charged_bytes
                if charged > 0 and remaining <= 0:
                    raise CreditViolation(f"{charged} bytes arrived with no credit left")
                if not plain and charged != len(resp.batches):
                    raise CreditViolation(f"charged {charged} bytes for {len(resp.batches)} bytes of batches")
                remaining -= charged
                self.stats["charged"] += charged
                self.stats["largest"] = max(self.stats["largest"], charged)
                self.stats["responses"] += 1
                yield resp
                if not one_shot and charged > 0:
                    requests.send(broker_pb2.FetchRequest(credit=common_pb2.FetchCredit(bytes=charged)))
                    remaining += charged
                    self.stats["granted"] += charged
        except grpc.RpcError as e:
            raise SluiceError.from_rpc(e) from None
        finally:
            requests.close()
            call.cancel()

    # --- a consumer-group member -----------------------------------------------------------

    def join(self, group, topics):
        return Member(self, group, topics)


class Member:
    """One member of a consumer group over a Membership stream."""

    def __init__(self, client, group, topics):
        self.group = group
        self._requests = _Requests()
        self._events = client.groups.Membership(iter(self._requests))
        self._requests.send(groups_pb2.MemberRequest(join=groups_pb2.JoinGroup(group_id=group, topics=topics)))
        joined = self._next().joined
        self.member_id = joined.member_id
        self._stop = threading.Event()
        interval = max(joined.heartbeat_interval_ms, 100) / 1000.0
        self._beat = threading.Thread(target=self._heartbeat, args=(interval,), daemon=True)
        self._beat.start()
        self.generation, self.partitions, self.committed = 0, {}, {}
        self._next_commit = 0

    def _next(self):
        try:
            return next(self._events)
        except grpc.RpcError as e:
            raise SluiceError.from_rpc(e) from None

    def _heartbeat(self, interval):
        while not self._stop.wait(interval):
            self._requests.send(groups_pb2.MemberRequest(heartbeat=groups_pb2.Heartbeat()))

    def assignment(self):
        """Waits for the next assignment, takes it and acknowledges it."""
        while True:
            ev = self._next()
            if ev.HasField("assignment"):
                a = ev.assignment
                self.generation = a.generation
                self.partitions = {tp.topic: sorted(tp.partitions) for tp in a.partitions}
                self.committed = {(o.topic, o.partition): o.offset for o in a.offsets}
                self._requests.send(groups_pb2.MemberRequest(ack=groups_pb2.AssignmentAck(generation=a.generation)))
                return self.partitions

    def commit(self, offsets):
        """Commits {(topic, partition): next offset} on the stream and waits for the answer."""
        self._next_commit += 1
        req = groups_pb2.CommitOffsetsRequest(
            id=self._next_commit, group_id=self.group, generation=self.generation,
            offsets=[groups_pb2.CommittedOffset(topic=t, partition=p, offset=o) for (t, p), o in offsets.items()])
        self._requests.send(groups_pb2.MemberRequest(commit=req))
        while True:
            ev = self._next()
            if ev.HasField("commit") and ev.commit.id == req.id:
                if ev.commit.HasField("error"):
                    raise SluiceError.from_proto(ev.commit.error)
                for r in ev.commit.results:
                    if r.HasField("error"):
                        raise SluiceError.from_proto(r.error)
                return

    def leave(self):
        """Ends the stream cleanly: the coordinator takes it as a leave."""
        self._stop.set()
        self._requests.close()
        for _ in self._events:
            pass


if __name__ == "__main__":
    c = Client(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:7070")
    try:
        c.create_topic("py-demo", partitions=3)
    except SluiceError as e:
        print(e)
    print(c.produce("py-demo", [(b"k%d" % i, b"hello %d" % i) for i in range(10)]))
    for resp in c.fetch("py-demo", {0: EARLIEST, 1: EARLIEST, 2: EARLIEST}, 1 << 20, one_shot=True):
        for r in resp.records:
            print(r.partition, r.offset, r.key, r.value)
