"""A worker process: ``python -m splitproxy.workers.child CHANNEL_FD NAME=FD...``.

Started by the supervisor only (``supervisor.py``), never by hand: it inherits the channel to
the supervisor and its listening sockets as file descriptors (``proxy=6``, ``preview=7`` when
there is a preview listener, ``admin=8`` for the leader). It reads its `ipc.Hello`, builds a
`server.Server` linked to the others (`link.WorkerLink`), serves until SIGTERM (or until the
supervisor is gone), then drains as a single process does. Exit codes: 0 after a drain, 1
when it could not start.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from splitproxy import logs
from splitproxy.errors import ConfigError
from splitproxy.server import Server, new_event_loop
from splitproxy.workers.ipc import Channel, Hello, StateUpdate
from splitproxy.workers.link import LISTENERS, Listener, WorkerLink

if TYPE_CHECKING:
    from splitproxy.settings import Settings

logger = logging.getLogger("splitproxy.workers")


def follower_settings(settings: Settings) -> Settings:
    """A follower's settings: no routing file, git branch or state directory of its own (the
    leader's state is what it serves), so no reloader and nothing written."""
    update = {"config": None, "config_git": None, "state_dir": None, "reload_watch": False}
    return settings.model_copy(update=update)


async def run(channel_fd: int, listeners: dict[Listener, socket.socket]) -> int:
    channel = await Channel.open(socket.socket(fileno=channel_fd))
    hello = await channel.receive()
    if not isinstance(hello, Hello):
        print("splitproxy worker: no hello from the supervisor", file=sys.stderr)
        return 1
    settings = hello.settings
    logs.configure(settings.log_format, settings.log_level, worker=hello.worker)
    link = WorkerLink(hello.worker, channel, listeners)
    if not hello.leader:
        settings = follower_settings(settings)
        first = await channel.receive()
        if not isinstance(first, StateUpdate):
            print("splitproxy worker: no state from the leader", file=sys.stderr)
            return 1
        link.first = first.state
    server = Server(settings, worker=link)
    try:
        await server.start()
    except ConfigError as exc:
        print(exc.describe(), file=sys.stderr)
        await server.shutdown()
        return 1
    except OSError as exc:
        print(f"splitproxy: cannot listen: {exc}", file=sys.stderr)
        await server.shutdown()
        return 1
    server.install_signal_handlers()
    loop = asyncio.get_running_loop()
    if not hello.leader:  # reloads are the leader's; a terminal's hang-up must not kill this one
        loop.add_signal_handler(signal.SIGHUP, lambda: None)
    link.begin(server)
    gone = loop.create_task(link.gone.wait())
    stopped = loop.create_task(server.stopped())
    try:
        await asyncio.wait((gone, stopped), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        stopped.cancel()
        server.request_stop()
        await server.shutdown()
        await link.close()
        await channel.close()
    return 0


def main(argv: Sequence[str]) -> int:
    channel_fd, *named = argv
    listeners: dict[Listener, socket.socket] = {}
    for item in named:
        name, _, fd = item.partition("=")
        if name in LISTENERS:
            listeners[name] = socket.socket(fileno=int(fd))
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(run(int(channel_fd), listeners))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
