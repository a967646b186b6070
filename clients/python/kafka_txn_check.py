"""A transactional consume-transform-produce with librdkafka (confluent-kafka) against
Sluice's Kafka listener.

Run by tests/kafka.rs with the listener address. 100 records go to `tx-in`; a group member
reads them (read_committed) and, in transactions of up to 10 records, writes each upper-cased
to `tx-out` and sends its consumed offsets with `send_offsets_to_transaction`, then commits.
One extra transaction writes records and aborts. Read back: read_committed sees exactly the
100 transformed records, read_uncommitted sees the aborted ones too, and the group's
committed offsets cover all 100 inputs. Prints one JSON line with what it saw.
"""

import json
import sys
import time

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kafka_run import run

RECORDS = 100


def read_all(bootstrap: str, topic: str, isolation: str, expect_at_least: int) -> list:
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{isolation}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": isolation,
        }
    )
    c.assign([TopicPartition(topic, p, 0) for p in range(2)])
    out, idle_since = [], time.time()
    deadline = time.time() + 30
    while time.time() < deadline:
        msg = c.poll(0.2)
        if msg is None:
            if len(out) >= expect_at_least and time.time() - idle_since > 1.5:
                break
            continue
        assert not msg.error(), msg.error()
        out.append(msg.value().decode())
        idle_since = time.time()
    c.close()
    return out


def main() -> None:
    bootstrap = sys.argv[1]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic("tx-in", 2), NewTopic("tx-out", 2)]).values():
        f.result(timeout=15)
    plain = Producer({"bootstrap.servers": bootstrap})
    for i in range(RECORDS):
        plain.produce("tx-in", key=f"k{i}", value=f"v{i}")
    assert plain.flush(30) == 0

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "tx-group",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe(["tx-in"])
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": "tx-py", "linger.ms": 5})
    producer.init_transactions(15)

    # One aborted transaction first: its records must never reach read_committed readers.
    producer.begin_transaction()
    for i in range(5):
        producer.produce("tx-out", key=f"a{i}", value=f"ABORTED-{i}")
    producer.flush(15)
    producer.abort_transaction(15)

    done, transactions = 0, 0
    deadline = time.time() + 60
    while done < RECORDS:
        assert time.time() < deadline, f"stuck at {done}"
        msgs = consumer.consume(num_messages=10, timeout=0.5)
        if not msgs:
            continue
        producer.begin_transaction()
        for m in msgs:
            assert not m.error(), m.error()
            producer.produce("tx-out", key=m.key(), value=m.value().decode().upper())
        producer.send_offsets_to_transaction(
            consumer.position(consumer.assignment()), consumer.consumer_group_metadata(), 15
        )
        producer.commit_transaction(15)
        done += len(msgs)
        transactions += 1
    consumer.close()

    committed_view = read_all(bootstrap, "tx-out", "read_committed", RECORDS)
    everything = read_all(bootstrap, "tx-out", "read_uncommitted", RECORDS + 5)
    offsets = admin.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions("tx-group", [TopicPartition("tx-in", p) for p in range(2)])]
    )["tx-group"].result(timeout=15)
    print(
        json.dumps(
            {
                "transactions": transactions,
                "committed_view": sorted(committed_view),
                "aborted_seen_uncommitted": sum(1 for v in everything if v.startswith("ABORTED")),
                "group_offsets": sum(tp.offset for tp in offsets.topic_partitions),
            }
        )
    )


if __name__ == "__main__":
    run(main)
