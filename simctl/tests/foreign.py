"""A consumer that is not ours, misbehaving the way a user's own service could.

The verdict's checks must not depend on our worker's cooperation: each defect here reaches
the stream through a plain NATS client (nats-py), the way a foreign service would.

  foreign.py nak URL STREAM DURABLE DELAY_S
      Take one message from a partition's durable (bound beside the worker that owns it)
      and negatively acknowledge it with a delay: the broker redelivers it after DELAY_S,
      after its successors were processed.

  foreign.py rogue URL STREAM DURABLE SOCKET PROCESS COUNT
      A second consumer of a partition: an ephemeral consumer on the subject of DURABLE's
      partition, from the first message, processing COUNT messages and reporting them to the
      agent's report socket under PROCESS (the child contract, docs in agent/src/report.rs),
      each with the delivery count the broker gave it.

  foreign.py steal URL STREAM DURABLE SOCKET PROCESS COUNT
      The same, bound to DURABLE itself beside the worker that owns the partition: the
      broker hands each message to one of the two, so nothing is processed twice, and
      the reports carry assignment version 0. Only the assignment document can tell.

  foreign.py swallow URL STREAM DURABLE
      Take one message from a partition's durable and acknowledge it without processing or
      reporting it: a message somebody took and lost.

Each prints one JSON line saying what it did. Waits have deadlines; nothing is retried
forever.
"""

import asyncio
import json
import socket
import sys
import time

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

DEADLINE_S = 60


def now_us():
    return time.time_ns() // 1000


async def consumer_info(js, stream, durable):
    """The durable's info, once a worker has created it."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            return await js.consumer_info(stream, durable)
        except nats.js.errors.NotFoundError:
            if time.monotonic() > deadline:
                raise SystemExit(f"durable {durable} did not appear within {DEADLINE_S}s")
            await asyncio.sleep(0.2)


async def fetch_one(sub):
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        try:
            return (await sub.fetch(1, timeout=1))[0]
        except nats.errors.TimeoutError:
            continue
    raise SystemExit(f"no message within {DEADLINE_S}s")


async def nak(url, stream, durable, delay_s):
    nc = await nats.connect(url)
    js = nc.jetstream()
    await consumer_info(js, stream, durable)
    sub = await js.pull_subscribe_bind(durable=durable, stream=stream)
    msg = await fetch_one(sub)
    await msg.nak(delay=float(delay_s))
    body = json.loads(msg.data)
    print(json.dumps({"nakked": {"partition": body["partition_id"],
                                 "seq": body["partition_sequence"],
                                 "delay_s": float(delay_s)}}), flush=True)
    await nc.drain()


async def swallow(url, stream, durable):
    nc = await nats.connect(url)
    js = nc.jetstream()
    await consumer_info(js, stream, durable)
    sub = await js.pull_subscribe_bind(durable=durable, stream=stream)
    msg = await fetch_one(sub)
    await msg.ack_sync()
    body = json.loads(msg.data)
    print(json.dumps({"swallowed": {"partition": body["partition_id"],
                                    "seq": body["partition_sequence"]}}), flush=True)
    await nc.drain()


async def rogue(url, stream, durable, socket_path, process, count, bind=False):
    nc = await nats.connect(url)
    js = nc.jetstream()
    info = await consumer_info(js, stream, durable)
    subject = info.config.filter_subject
    if bind:
        sub = await js.pull_subscribe_bind(durable=durable, stream=stream)
    else:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.EXPLICIT)
        sub = await js.pull_subscribe(subject, stream=stream, config=config)
    reports = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    reports.connect(socket_path)
    reports.sendall((json.dumps({"type": "hello", "process": process}) + "\n").encode())
    seqs = []
    for _ in range(int(count)):
        msg = await fetch_one(sub)
        received = now_us()
        body = json.loads(msg.data)
        report = {
            "type": "processed",
            "partition": body["partition_id"],
            "seq": body["partition_sequence"],
            "worker_id": "rogue",
            "incarnation": 1,
            "delivered": msg.metadata.num_delivered,
            "stream_seq": msg.metadata.sequence.stream,
            "assignment_version": 0,
            "published_us": body["timestamp"],
            "received_us": received,
            "processed_us": now_us(),
        }
        # Written to the socket before the ack, as the contract asks.
        reports.sendall((json.dumps(report) + "\n").encode())
        await msg.ack()
        seqs.append(report["seq"])
    reports.close()
    mode = "steal" if bind else "rogue"
    print(json.dumps({mode: {"subject": subject, "seqs": seqs}}), flush=True)
    await nc.drain()


def main(argv):
    if len(argv) >= 5 and argv[0] == "nak":
        asyncio.run(nak(*argv[1:5]))
    elif len(argv) >= 4 and argv[0] == "swallow":
        asyncio.run(swallow(*argv[1:4]))
    elif len(argv) >= 7 and argv[0] in ("rogue", "steal"):
        asyncio.run(rogue(*argv[1:7], bind=argv[0] == "steal"))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
