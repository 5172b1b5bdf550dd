"""Worker processes: an identity per process start, a heartbeat, and alive or gone."""

from __future__ import annotations

import os

import pytest

from tests.helpers.cluster import wait_until
from workers.runtime.liveness import Heartbeat, Holder, alive, heartbeat_key, machine_id, this_process


def test_a_process_has_one_identity_and_a_forked_child_draws_its_own():
    me = this_process()
    assert this_process() is me and me.machine == machine_id()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its own token, its own pid
        child = this_process()
        os.write(write, f"{child.token} {child.pid}".encode())
        os._exit(0)
    os.waitpid(pid, 0)
    token, child_pid = os.read(read, 100).decode().split()
    assert token != me.token and int(child_pid) == pid
    assert alive([Holder(token, "n", me.machine, pid, "1")], None)[token] is False  # exited: gone at once


@pytest.mark.integration
def test_a_process_elsewhere_is_alive_while_its_heartbeat_is(redis_server):
    client = redis_server.client(db=10)
    client.flushdb()
    other = Holder("a1b2c3d4e5f60708", "gpu@host-2", "another-machine", 7, "1")
    beat = Heartbeat(client, other, every_s=0.05, ttl_s=30).start()
    assert alive([other], client) == {other.token: True}
    client.pexpire(heartbeat_key(other.token), 10_000)
    wait_until(lambda: client.pttl(heartbeat_key(other.token)) > 10_000, 30, "the next beat")  # it beats on
    beat.stop()  # a clean exit: gone at once
    assert not client.exists(heartbeat_key(other.token))
    assert alive([other], client) == {other.token: False}
