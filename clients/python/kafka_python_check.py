"""kafka-python (a pure-Python Kafka client, from PyPI) against Sluice's Kafka listener.

Run by tests/kafka.rs with the listener address. The admin client creates a topic; a
gzip-compressing producer writes 50 keyed records; a group member reads them and commits;
after 10 more records, a new member of the same group reads exactly those 10. Prints one JSON
line with what it saw.
"""

import json
import sys
import time

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic


def produce(bootstrap: str, first: int, count: int) -> None:
    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", compression_type="gzip", linger_ms=5)
    for i in range(first, first + count):
        p.send("kp", key=f"k{i}".encode(), value=f"v{i}".encode(), headers=[("n", str(i).encode())])
    p.flush(30)
    p.close()


def consume(bootstrap: str, expect: int) -> list:
    c = KafkaConsumer(
        "kp",
        bootstrap_servers=bootstrap,
        group_id="kp-group",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    seen, deadline = [], time.time() + 60
    while len(seen) < expect and time.time() < deadline:
        for records in c.poll(timeout_ms=200).values():
            seen.extend(r.value.decode() for r in records)
    # Anything beyond what was expected would show up now.
    for records in c.poll(timeout_ms=1000).values():
        seen.extend(r.value.decode() for r in records)
    c.commit()
    c.close()
    return seen


def main() -> None:
    bootstrap = sys.argv[1]
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic("kp", num_partitions=2, replication_factor=1)])
    produce(bootstrap, 0, 50)
    first = consume(bootstrap, 50)
    produce(bootstrap, 50, 10)
    second = consume(bootstrap, 10)
    listed = admin.list_groups()
    groups = sorted((g["group_id"], g["group_type"]) for g in listed)
    admin.close()
    print(json.dumps({"first": sorted(first), "second": sorted(second), "groups": groups}))


if __name__ == "__main__":
    main()
