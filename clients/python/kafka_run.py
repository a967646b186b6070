"""Runs a Kafka client check's `main` for tests/kafka.rs: on any failure the traceback is
printed and the process leaves at once, since open librdkafka clients would otherwise hold
the interpreter's exit until the test's deadline."""

import os
import sys
import traceback


def run(main) -> None:
    try:
        main()
    except BaseException:
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
