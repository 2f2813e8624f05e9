"""Celery throughput for `loadtest peers`: `runs` no-op tasks sent to a
Celery worker (started here, with the given pool and concurrency), counted
when each task ends (the task increments a Redis counter). Prints one JSON line.

    python celery_bench.py --port 6379 --runs 5000 --pool prefork --concurrency 2
"""

import argparse
import json
import os
import subprocess
import sys
import time

import redis
from celery import Celery

PORT = int(os.environ.get("PEERS_REDIS_PORT", "6379"))
app = Celery("celery_bench", broker=f"redis://127.0.0.1:{PORT}/0")
app.conf.task_ignore_result = True
app.conf.worker_prefetch_multiplier = 64
app.conf.broker_connection_retry_on_startup = True
COUNTER = "celery-bench-done"


@app.task(name="noop")
def noop(i):
    global CLIENT
    if CLIENT is None:
        CLIENT = redis.Redis(port=PORT)
    CLIENT.incr(COUNTER)


CLIENT = None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=PORT)
    ap.add_argument("--runs", type=int, default=5000)
    ap.add_argument("--pool", default="prefork")
    ap.add_argument("--concurrency", type=int, default=2)
    a = ap.parse_args()
    app.conf.broker_url = f"redis://127.0.0.1:{a.port}/0"
    env = dict(os.environ, PEERS_REDIS_PORT=str(a.port), C_FORCE_ROOT="1")
    r = redis.Redis(port=a.port)
    r.delete(COUNTER)
    here = os.path.dirname(os.path.abspath(__file__))
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "celery_bench", "worker", "--pool", a.pool,
         "--concurrency", str(a.concurrency), "--loglevel", "warning", "--without-gossip",
         "--without-mingle", "--without-heartbeat"],
        cwd=here, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        # Wait for the worker: one task must come back.
        noop.delay(-1)
        deadline = time.monotonic() + 60
        while int(r.get(COUNTER) or 0) < 1:
            if time.monotonic() > deadline or worker.poll() is not None:
                sys.exit("the Celery worker did not start")
            time.sleep(0.05)
        r.delete(COUNTER)
        t0 = time.monotonic()
        for i in range(a.runs):
            noop.delay(i)
        deadline = time.monotonic() + 600
        while int(r.get(COUNTER) or 0) < a.runs:
            if time.monotonic() > deadline:
                sys.exit(f"only {int(r.get(COUNTER) or 0)} of {a.runs} tasks ended within 600 s")
            time.sleep(0.01)
        seconds = time.monotonic() - t0
        print(json.dumps({"system": f"Celery, {a.pool} {a.concurrency}", "runs": a.runs, "seconds": seconds,
                          "runs_per_s": a.runs / seconds}))
    finally:
        worker.terminate()
        worker.wait(30)


if __name__ == "__main__":
    main()
