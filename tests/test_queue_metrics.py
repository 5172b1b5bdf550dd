"""The autoscalers' metric: a queue's waiting plus reserved messages, from a real Redis and a real
worker holding a batch (what KEDA's list-length trigger cannot see)."""

from __future__ import annotations

import json
import threading
import urllib.request

import pytest

from testbed.servers import free_port
from tests.helpers.cluster import wait_until
from tests.helpers.images import write_images
from tests.helpers.scenarios import with_faults
from workers.runtime.queue_metrics import make_server, queue_depths

pytestmark = pytest.mark.integration


def test_messages_a_busy_worker_holds_count_with_those_still_waiting(cluster, tmp_path):
    cluster.env["GPU_BATCH_WAIT_S"] = "1"
    stalled = cluster.start("gpu", **with_faults("stall-forward"))  # takes a batch of GPU_BATCH_SIZE (4), hangs in it
    write_images(tmp_path / "in", 10)
    sent = cluster.producer("enqueue", str(tmp_path / "in"), "--no-wait", cwd=tmp_path)
    assert sent.returncode == 0, sent.stderr
    client = cluster.redis_client()
    wait_until(lambda: queue_depths(client)["gpu"].reserved > 0, 60, "the worker to take a batch")
    depth = queue_depths(client)["gpu"]
    assert depth.backlog == 10 and depth.waiting == client.llen("gpu") < 10  # the list alone undercounts
    assert queue_depths(client)["cpu"].backlog == 0

    server = make_server(client, "127.0.0.1", free_port())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        with urllib.request.urlopen(f"{base}/backlog", timeout=10) as answer:
            assert json.loads(answer.read())["gpu"] == {
                "waiting": depth.waiting,
                "reserved": depth.reserved,
                "backlog": 10,
            }
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as answer:
            text = answer.read().decode()
        assert 'lowlight_queue_backlog{queue="gpu"} 10' in text
        assert f'lowlight_queue_messages{{queue="gpu",state="reserved"}} {depth.reserved}' in text
    finally:
        server.shutdown()
        stalled.kill()  # hung in a forward pass: no warm shutdown to wait for
