"""``pick_port``: a port whose last connection lingers in TIME-WAIT is still the stack's port
(the issue: 8080 in TIME-WAIT made a restarted stack move to another port); a listened port is
not. And one stack per state directory."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from devstack.stack import Stack, pick_port

pytestmark = pytest.mark.integration


def _time_wait_port() -> int:
    """A loopback port with no listener left and a server-side connection in TIME-WAIT."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = int(listener.getsockname()[1])
    client = socket.create_connection(("127.0.0.1", port))
    served, _ = listener.accept()
    served.close()  # the server closes first: its side of the connection goes to TIME-WAIT
    client.recv(1)
    client.close()
    listener.close()
    return port


def test_a_port_in_time_wait_is_picked_again() -> None:
    port = _time_wait_port()
    with pytest.raises(OSError), socket.socket() as plain:
        plain.bind(("127.0.0.1", port))  # what pick_port did before: refused
    assert pick_port(port) == port


def test_a_port_with_a_listener_is_not_picked() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = int(listener.getsockname()[1])
        assert pick_port(port) != port


def test_one_stack_per_directory(tmp_path: Path) -> None:
    first = Stack(tmp_path)
    with pytest.raises(RuntimeError, match="another floopy-stack runs from"):
        Stack(tmp_path)
    os.close(first._lock_fd)  # what the first stack's exit does
    Stack(tmp_path)
