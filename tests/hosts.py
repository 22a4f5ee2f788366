"""Hosts for tests: Linux network namespaces on one bridge, each with an address of its own.

What issue #11 asks of the tests: cameras, workers, the core and a viewer on separate hosts,
and a host cut off (its link down: packets vanish, nothing is refused or reset, as with a
pulled cable or a Wi-Fi that drops) and brought back. The test process stays in its own
namespace and reaches every host through the bridge, whose address ends in .1.

Whatever a test makes here (the bridge, each namespace and link) is removed again at the
end, also when the test fails.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest


def ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


@dataclass(frozen=True)
class Host:
    name: str
    netns: str  # what Services(..., host=) takes
    address: str
    link: str  # its cable, on the bridge's side


class Hosts:
    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex[:6]
        self.net = f"10.{random.randint(200, 250)}.{random.randint(1, 250)}"
        self.bridge = f"encbr{self.tag}"
        self.hosts: list[Host] = []
        ip("link", "add", "name", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.net}.1/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        # Bridged packets pass the firewall's FORWARD chain where br_netfilter is on, and a
        # Docker engine (the compose test's, or one on a developer's machine) sets its policy
        # to DROP: let this bridge's own traffic through, as Docker does for docker0.
        self.forward_rule = ["FORWARD", "-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT"]
        if shutil.which("iptables"):
            subprocess.run(["iptables", "-I", *self.forward_rule], capture_output=True, timeout=10)

    def add(self, name: str) -> Host:
        n = len(self.hosts) + 2
        host = Host(name, f"enc{self.tag}{name}", f"{self.net}.{n}", f"e{self.tag}{n}")
        inside = f"i{self.tag}{n}"
        ip("netns", "add", host.netns)
        self.hosts.append(host)
        ip("link", "add", host.link, "type", "veth", "peer", "name", inside)
        ip("link", "set", inside, "netns", host.netns)
        ip("link", "set", host.link, "master", self.bridge)
        ip("link", "set", host.link, "up")
        ip("netns", "exec", host.netns, "ip", "addr", "add", f"{host.address}/24", "dev", inside)
        ip("netns", "exec", host.netns, "ip", "link", "set", inside, "up")
        ip("netns", "exec", host.netns, "ip", "link", "set", "lo", "up")
        return host

    def cut(self, host: Host) -> None:
        """The host's cable pulled: whatever it or anyone sends across is lost, without a word."""
        ip("link", "set", host.link, "down")

    def mend(self, host: Host) -> None:
        ip("link", "set", host.link, "up")

    def close(self) -> None:
        for host in self.hosts:
            subprocess.run(["ip", "link", "del", host.link], capture_output=True, timeout=10)
            subprocess.run(["ip", "netns", "del", host.netns], capture_output=True, timeout=10)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, timeout=10)
        if shutil.which("iptables"):
            subprocess.run(["iptables", "-D", *self.forward_rule], capture_output=True, timeout=10)


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.fail("these tests make network namespaces: they need root and iproute2 (ip)")
    made = Hosts()
    try:
        yield made
    finally:
        made.close()
