"""The local Ray a command starts (pipelines.distributed.connect with no address) is
reachable from this machine only: its node is 127.0.0.1, a task runs at 127.0.0.1, and no
process of it (this driver, GCS, raylet, workers, agents, dashboard) listens on any other
address. Left to itself, Ray turns 127.0.0.1 into the machine's own IP and listens on
every interface (connect.loopback_only)."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys

from conftest import sqlite_store

PROBE = """
import json, sys
import psutil, ray
from pipelines.distributed.connect import connect, disconnect

connect(None, sys.argv[1])
try:
    @ray.remote
    def node_ip():
        return ray.util.get_node_ip_address()

    task = ray.get(node_ip.remote())  # a worker is up: it listens too
    listening = set()
    for proc in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        try:
            listening |= {(c.laddr.ip, proc.name()) for c in proc.net_connections("inet")
                          if c.status == psutil.CONN_LISTEN}
        except psutil.NoSuchProcess:
            pass
    print(json.dumps({"nodes": [n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]],
                      "task": task, "listening": sorted(listening)}))
finally:
    disconnect()
"""


def test_the_local_ray_a_command_starts_listens_on_loopback_only(tmp_path):
    done = subprocess.run([sys.executable, "-c", PROBE, sqlite_store(tmp_path)], capture_output=True, text=True,
                          timeout=180, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["nodes"] == ["127.0.0.1"] and seen["task"] == "127.0.0.1", seen
    names = {name for _, name in seen["listening"]}
    assert "gcs_server" in names and "raylet" in names, seen  # the probe saw Ray's servers
    wide = [(ip, name) for ip, name in seen["listening"]
            if not ipaddress.ip_address(ip.removeprefix("::ffff:")).is_loopback]
    assert not wide, f"listening beyond loopback: {wide}"
