"""A consumer group of two librdkafka consumers (confluent-kafka) against Sluice's Kafka
listener, with the admin client's group calls.

Run by tests/kafka.rs with the listener address and an assignment strategy ("range" or
"cooperative-sticky", the classic protocol's client-side assignors) or "consumer" (KIP-848's
consumer protocol: the coordinator assigns, members heartbeat). Produces 400 keyed records to a new 4-partition topic, then two
consumers of one group split the partitions; each record is committed once processed. After
200 records the second consumer leaves: the first takes its partitions over from the committed
offsets and reads the rest. Every record must be seen; twice only when a rebalance refused
the commit that covered it (Kafka's at-least-once: the partition's new owner starts from the
last committed offset). The admin client then lists and describes the group, reads its
offsets, and deletes it once it is empty. Prints one JSON line with what it saw.
"""

import json
import sys
import time

from confluent_kafka import (
    Consumer,
    ConsumerGroupState,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic
from kafka_run import run

RECORDS = 400
# Commit refusals a rebalance may cause (113: STALE_MEMBER_EPOCH).
REFUSED = (KafkaError.REBALANCE_IN_PROGRESS, KafkaError.ILLEGAL_GENERATION, KafkaError.UNKNOWN_MEMBER_ID, 113)


class Member:
    """A consumer and the offsets it processed and has not committed yet."""

    def __init__(self, bootstrap: str, group: str, strategy: str, name: str, assigned: dict, stats: dict):
        self.name, self.pending, self.stats, self.topic = name, {}, stats, topic_of(strategy)
        self.consumer = consumer(bootstrap, group, strategy, name, assigned, self)

    def commit(self, partitions=None) -> bool:
        """Commits what was processed (of `partitions`, or all); a commit refused by a
        rebalance (REBALANCE_IN_PROGRESS, ILLEGAL_GENERATION, or STALE_MEMBER_EPOCH and
        UNKNOWN_MEMBER_ID with the consumer protocol) stays pending."""
        todo = {p: o for p, o in self.pending.items() if partitions is None or p in partitions}
        if not todo:
            return True
        offsets = [TopicPartition(self.topic, p, o) for p, o in todo.items()]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as e:
            if e.args[0].code() not in REFUSED:
                raise
            self.stats["refused_commits"] += 1
            return False
        for p, o in todo.items():
            if self.pending.get(p) == o:
                del self.pending[p]
        return True


def consumer(bootstrap: str, group: str, strategy: str, name: str, assigned: dict, member: "Member") -> Consumer:
    def on_assign(c, partitions):
        # The client assigns them itself after this callback (incrementally for a
        # cooperative strategy).
        assigned[name] = assigned.get(name, set()) | {p.partition for p in partitions}

    def on_revoke(c, partitions):
        # What was processed of them is committed before they go.
        gone = {p.partition for p in partitions}
        if not member.commit(gone):
            member.stats["lost_commits"] += 1
        for p in gone:
            member.pending.pop(p, None)
        assigned[name] = assigned.get(name, set()) - gone

    config = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "client.id": name,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    }
    if strategy == "consumer":
        # The coordinator sets the session and heartbeat; the client names an assignor.
        config.update({"group.protocol": "consumer", "group.remote.assignor": "uniform"})
    else:
        config.update(
            {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500, "partition.assignment.strategy": strategy}
        )
    c = Consumer(config)
    c.subscribe([topic_of(strategy)], on_assign=on_assign, on_revoke=on_revoke)
    return c


def topic_of(strategy: str) -> str:
    return "grp-" + strategy


def main() -> None:
    bootstrap, strategy = sys.argv[1], sys.argv[2]
    topic, group = topic_of(strategy), "pyg-" + strategy
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 4)])[topic].result(timeout=15)
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    for i in range(RECORDS):
        producer.produce(topic, key=f"k{i}", value=f"v{i}")
    assert producer.flush(30) == 0

    assigned: dict = {}
    seen: dict = {}
    stats = {"refused_commits": 0, "lost_commits": 0, "twice": 0}
    ma = Member(bootstrap, group, strategy, "a", assigned, stats)
    mb = Member(bootstrap, group, strategy, "b", assigned, stats)
    a, b = ma.consumer, mb.consumer

    def poll(c: Consumer, name: str) -> None:
        m = ma if name == "a" else mb
        msg = c.poll(0.05)
        if msg is not None:
            if msg.error():
                raise AssertionError(f"{name}: {msg.error()}")
            key = msg.key().decode()
            if key in seen:
                stats["twice"] += 1
            seen[key] = name
            m.pending[msg.partition()] = msg.offset() + 1
        m.commit()

    deadline = time.time() + 60
    split = False
    while len(seen) < RECORDS // 2 or not split:
        assert time.time() < deadline, f"stuck: {len(seen)} seen, assigned {assigned}"
        poll(a, "a")
        poll(b, "b")
        # Both hold partitions, none twice, all four between them.
        pa, pb = assigned.get("a", set()), assigned.get("b", set())
        split = split or (pa and pb and not (pa & pb) and len(pa | pb) == 4)
    by_b = sum(1 for n in seen.values() if n == "b")
    described = admin.describe_consumer_groups([group])[group].result(timeout=15)
    members_before = len(described.members)
    while not mb.commit():
        assert time.time() < deadline, "b's offsets could not be committed"
        poll(b, "b")
    b.close()
    while len(seen) < RECORDS or assigned.get("a") != {0, 1, 2, 3}:
        assert time.time() < deadline, f"stuck after b left: {len(seen)} seen, assigned {assigned}"
        poll(a, "a")
    while not ma.commit():
        assert time.time() < deadline, "a's offsets could not be committed"
        poll(a, "a")

    listed = admin.list_consumer_groups().result(timeout=15)
    states = {g.group_id: g.state for g in listed.valid}
    assert states.get(group) == ConsumerGroupState.STABLE, states
    asked = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in range(4)])
    offsets = admin.list_consumer_group_offsets([asked])[group].result(timeout=15)
    committed = sum(tp.offset for tp in offsets.topic_partitions)
    a.close()
    # Deleted once empty.
    admin.delete_consumer_groups([group])[group].result(timeout=15)
    print(
        json.dumps(
            {
                "seen": len(seen),
                "by_b": by_b,
                "members_before": members_before,
                "protocol": described.partition_assignor,
                "committed": committed,
                **stats,
            }
        )
    )


if __name__ == "__main__":
    run(main)
