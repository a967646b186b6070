"""End-to-end checks of the Python client against a running cluster (SLUICE_GATEWAY), run by
tests/python_client.rs on a real cluster of several partition nodes. No Rust code is involved
on the client side: the stubs are generated from proto/ by sluice_client on import."""

import os
import unittest

import grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

import sluice_client as sc

GATEWAY = os.environ.get("SLUICE_GATEWAY", "127.0.0.1:7070")
PARTITIONS = 6
RECORDS = 3000
VALUE = b"v" * 1000


class PythonClient(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.c = sc.Client(GATEWAY)
        cls.topic = "py-" + os.urandom(4).hex()
        cls.c.create_topic(cls.topic, partitions=PARTITIONS, replication_factor=1)
        records = [(b"key-%d" % i, b"%d:" % i + VALUE) for i in range(RECORDS)]
        # Small requests: batches stay small, so the credit checks below are tight.
        cls.placed = cls.c.produce(cls.topic, records, per_request=20)
        cls.expected = {}
        for i, (p, o) in enumerate(cls.placed):
            cls.expected[(p, o)] = records[i]

    @classmethod
    def tearDownClass(cls):
        cls.c.close()

    def test_admin_and_errors(self):
        names = [t.name for t in self.c.list_topics()]
        self.assertIn(self.topic, names)
        alive = [n for n in self.c.list_nodes() if n.alive]
        self.assertGreaterEqual(len(alive), 3)
        leaders = {p.leader for p in self.c.describe_topic(self.topic).partitions}
        self.assertGreaterEqual(len(leaders), 2, "the topic's partitions are led by several nodes")
        with self.assertRaises(sc.SluiceError) as bad:
            self.c.create_topic("no spaces allowed", partitions=1)
        self.assertEqual(bad.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertEqual(bad.exception.sluice_code, 1001)
        with self.assertRaises(sc.SluiceError) as missing:
            self.c.describe_topic("py-no-such-topic")
        self.assertEqual(missing.exception.code, grpc.StatusCode.NOT_FOUND)
        self.assertEqual(missing.exception.sluice_code, 1003)

    def test_reflection_v1alpha_lists_the_public_services_only(self):
        db = ProtoReflectionDescriptorDatabase(self.c.channel)
        services = set(db.get_services())
        for s in ["sluice.v1.Admin", "sluice.v1.Broker", "sluice.v1.Groups"]:
            self.assertIn(s, services)
        self.assertNotIn("sluice.v1.PartitionNode", services)

    def test_acks_map_back_to_records(self):
        # Keys decide partitions: one key, one partition, offsets in send order.
        by_key = {}
        for i, (p, o) in enumerate(self.placed):
            by_key.setdefault(b"key-%d" % i, set()).add(p)
        self.assertEqual(len(self.placed), RECORDS)
        self.assertEqual(len(set(self.placed)), RECORDS, "every record has its own offset")
        again = self.c.produce(self.topic, [(b"key-7", b"again")], per_request=1)
        self.assertEqual(again[0][0], self.placed[7][0], "a key always goes to the same partition")
        compressed = self.c.produce(self.topic, [(b"z", b"zz" * 500)] * 50, per_request=50,
                                    compression=sc.common_pb2.COMPRESSION_ZSTD)
        self.assertEqual(len(compressed), 50)

    def test_fetch_reads_everything_within_its_credit_from_several_nodes(self):
        credit = 64 << 10
        seen = {}
        offsets = {p: sc.EARLIEST for p in range(PARTITIONS)}
        stream = self.c.fetch(self.topic, offsets, credit)
        for resp in stream:
            for r in resp.records:
                if (r.partition, r.offset) in self.expected:
                    seen[(r.partition, r.offset)] = (r.key, r.value)
            if len(seen) == RECORDS:
                break
        stream.close()
        self.assertEqual(seen, self.expected)
        st = self.c.stats
        self.assertGreater(st["responses"], PARTITIONS)
        # At most the credit is outstanding: all the client was charged, it had granted.
        self.assertLessEqual(st["charged"], st["granted"])

    def test_a_one_shot_fetch_gets_its_credit_and_no_more(self):
        credit = 48 << 10
        offsets = {p: sc.EARLIEST for p in range(PARTITIONS)}
        for plain in (True, False):
            responses = list(self.c.fetch(self.topic, offsets, credit, plain=plain, one_shot=True))
            st = self.c.stats
            self.assertTrue(responses)
            self.assertGreater(st["charged"], 0)
            # Data arrives only while credit is left, and a batch is never split: the total
            # passes the credit by less than the largest response.
            self.assertLess(st["charged"], credit + st["largest"], st)
            # Three nodes lead the partitions: without one budget per stream each node would
            # send up to the whole credit.
            self.assertLess(st["charged"], 2 * credit, st)

    def test_a_group_member_joins_and_commits(self):
        group = "py-group-" + os.urandom(3).hex()
        m = self.c.join(group, [self.topic])
        try:
            held = m.assignment()
            self.assertEqual(held, {self.topic: list(range(PARTITIONS))})
            ends = {}
            for p, o in self.placed:
                ends[p] = max(ends.get(p, 0), o + 1)
            m.commit({(self.topic, p): o for p, o in ends.items()})
        finally:
            m.leave()
        got = self.c.groups.FetchOffsets(sc.groups_pb2.FetchOffsetsRequest(group_id=group, topic=self.topic))
        self.assertEqual({o.partition: o.offset for o in got.offsets}, ends)


if __name__ == "__main__":
    unittest.main(verbosity=2)
