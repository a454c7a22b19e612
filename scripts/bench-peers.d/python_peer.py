"""stripe-python's own verify+parse, timed in-process: `stripe.Webhook.construct_event` on the
raw body bytes, as a Flask or Django view receives them.

Usage: python python_peer.py BODY_FILE HEADER SECRET TOLERANCE ITERATIONS ROUNDS
"""

import json
import platform
import statistics
import sys
import time

import stripe

body_file, header, secret, tolerance, iterations, rounds = sys.argv[1:7]
tolerance, iterations, rounds = int(tolerance), int(iterations), int(rounds)
with open(body_file, "rb") as f:
    body = f.read()

event = stripe.Webhook.construct_event(body, header, secret, tolerance)
if event.id != "evt_1QcXic3ZRdECX8ViXm5ez2uC" or event.type != "account.updated":
    raise SystemExit(f"unexpected event {event.id} {event.type}")


def one_round() -> float:
    construct = stripe.Webhook.construct_event
    start = time.perf_counter_ns()
    for _ in range(iterations):
        construct(body, header, secret, tolerance)
    return (time.perf_counter_ns() - start) / 1000 / iterations


one_round()  # warm-up
per_round = [one_round() for _ in range(rounds)]
print(
    json.dumps(
        {
            "peer": f"stripe-python {stripe.VERSION} (CPython {platform.python_version()})",
            "call": "stripe.Webhook.construct_event",
            "iterations": iterations,
            "median_us": statistics.median(per_round),
            "rounds_us": per_round,
        }
    )
)
