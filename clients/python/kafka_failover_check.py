"""A librdkafka producer and a group consumer (confluent-kafka) riding through the loss of
one of two gateways, or of the active group coordinator.

Run by tests/kafka.rs with the Kafka listeners of the gateways and the group protocol
("classic" or "consumer", KIP-848), while the test kills a gateway or the coordinator a few
seconds in. An idempotent producer writes 3000 keyed records over about 15
seconds; a group member reads them as they come and commits. Once everything is delivered,
the consumer reads on until it has seen every record. Prints one JSON line: what was
delivered, what failed, what was read and how many were read twice.
"""

import json
import sys
import time

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from kafka_run import run

RECORDS = 3000


def main() -> None:
    bootstrap, protocol = sys.argv[1], sys.argv[2]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic("fo", 4)])["fo"].result(timeout=15)
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "linger.ms": 5,
            "message.timeout.ms": 60000,
        }
    )
    config = {
        "bootstrap.servers": bootstrap,
        "group.id": "fo-group",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": True,
        "auto.commit.interval.ms": 500,
    }
    # The consumer protocol's session is the coordinator's to set.
    config.update({"group.protocol": "consumer"} if protocol == "consumer" else {"session.timeout.ms": 10000})
    consumer = Consumer(config)
    consumer.subscribe(["fo"])
    delivered, failed, seen, twice = set(), [], set(), 0

    def report(err, msg):
        if err is None:
            delivered.add(msg.key().decode())
        else:
            failed.append(str(err))

    def consume(timeout: float) -> None:
        nonlocal twice
        msg = consumer.poll(timeout)
        if msg is None or msg.error():
            return
        key = msg.key().decode()
        twice += key in seen
        seen.add(key)

    start = time.time()
    for i in range(RECORDS):
        producer.produce("fo", key=f"k{i}", value=f"v{i}", on_delivery=report)
        producer.poll(0)
        consume(0)
        # About 200 records a second, so that the kill lands mid-stream.
        while time.time() < start + i / 200:
            consume(0.002)
    left = producer.flush(60)
    deadline = time.time() + 60
    while len(seen) < len(delivered) and time.time() < deadline:
        consume(0.2)
    consumer.close()
    print(
        json.dumps(
            {"delivered": len(delivered), "failed": failed[:5], "left": left, "seen": len(seen), "twice": twice,
             "missing": sorted(delivered - seen)[:5]}
        )
    )


if __name__ == "__main__":
    run(main)
