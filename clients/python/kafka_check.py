"""Kafka's librdkafka client (confluent-kafka from PyPI) against Sluice's Kafka listener.

Run by tests/kafka.rs with the listener address as the only argument: creates and deletes
topics with the admin client, then produces keyed records with idempotent producers
compressing with lz4 and with snappy; the Rust test reads them back over gRPC. Prints one
JSON line with what it did.
"""

import json
import sys
import time

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, ConfigResource, NewPartitions, NewTopic


def main() -> None:
    bootstrap = sys.argv[1]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    done = {}
    new = [NewTopic("py-admin", 3), NewTopic("py", 4), NewTopic("py-order", 1), NewTopic("py-snappy", 1)]
    for name, f in admin.create_topics(new, operation_timeout=10).items():
        f.result(timeout=15)
        done[name] = "created"
    topics = admin.list_topics(timeout=10).topics
    assert len(topics["py-admin"].partitions) == 3, topics
    try:
        admin.create_topics([NewTopic("py", 4)])["py"].result(timeout=15)
        raise AssertionError("creating an existing topic succeeded")
    except Exception as e:  # the admin client raises KafkaException
        done["again"] = str(e.args[0].name()) if e.args and hasattr(e.args[0], "name") else str(e)
    for name, f in admin.delete_topics(["py-admin"], operation_timeout=10).items():
        f.result(timeout=15)
        done[name] = "deleted"
    assert "py-admin" not in admin.list_topics(timeout=10).topics
    # Topic configs, with their effective values; the cluster as DescribeCluster has it.
    described = admin.describe_configs([ConfigResource("topic", "py")])[ConfigResource("topic", "py")].result(15)
    done["retention.ms"] = described["retention.ms"].value
    done["cleanup.policy"] = described["cleanup.policy"].value
    done["brokers"] = len(admin.describe_cluster().result(timeout=15).nodes)

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "compression.type": "lz4",
            "partitioner": "murmur2_random",
            "linger.ms": 5,
        }
    )
    errors = []

    def report(err, _msg):
        if err is not None:
            errors.append(str(err))

    for i in range(200):
        # Compressible values: librdkafka sends a batch uncompressed when lz4 would not shrink it.
        producer.produce("py", key=f"k{i}", value=f"v{i}-" + "x" * 300, headers={"n": str(i)}, on_delivery=report)
    left = producer.flush(30)
    assert left == 0 and not errors, (left, errors[:3])
    done["produced"] = 200

    # Many requests in flight on one connection, one record each, not idempotent: the
    # listener must dispatch them in arrival order for the partition to keep send order.
    pipelined = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": False,
            "linger.ms": 0,
            "batch.num.messages": 1,
            "max.in.flight.requests.per.connection": 100,
            "acks": "all",
        }
    )
    for i in range(300):
        pipelined.produce("py-order", value=f"o{i}", partition=0, on_delivery=report)
        pipelined.poll(0)
    left = pipelined.flush(30)
    assert left == 0 and not errors, (left, errors[:3])
    done["pipelined"] = 300

    # Snappy as librdkafka writes it (one raw block per batch).
    snappy = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "compression.type": "snappy",
            "linger.ms": 20,
        }
    )
    for i in range(100):
        snappy.produce("py-snappy", key=f"s{i}", value=f"snappy-{i}-" + "y" * 200, on_delivery=report)
    left = snappy.flush(30)
    assert left == 0 and not errors, (left, errors[:3])
    done["snappy"] = 100

    # Partitions added through the admin client; fewer is refused.
    admin.create_partitions([NewPartitions("py-snappy", 3)])["py-snappy"].result(timeout=15)
    done["grown"] = len(admin.list_topics("py-snappy", timeout=10).topics["py-snappy"].partitions)
    try:
        admin.create_partitions([NewPartitions("py-snappy", 2)])["py-snappy"].result(timeout=15)
        raise AssertionError("shrinking a topic succeeded")
    except Exception as e:
        done["shrink"] = str(e.args[0].name()) if e.args and hasattr(e.args[0], "name") else str(e)
    # The producer learns of the new partitions with its next metadata.
    for _ in range(50):
        if len(snappy.list_topics("py-snappy", timeout=10).topics["py-snappy"].partitions) == 3:
            break
        time.sleep(0.1)
    snappy.produce("py-snappy", value="in-new-partition", partition=2, on_delivery=report)
    assert snappy.flush(30) == 0 and not errors, errors[:3]
    print(json.dumps(done))


if __name__ == "__main__":
    main()
