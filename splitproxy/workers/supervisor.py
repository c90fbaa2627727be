"""The supervisor: ``splitproxy serve --workers N`` starts N worker processes on one listener.

*The listeners* (``listeners.py``): the supervisor binds a socket per worker with
``SO_REUSEPORT`` (one shared socket where the platform has none), so the kernel spreads new
connections evenly over the workers; keep-alive connections stay where they landed.

*The workers.* Worker 0 is the leader (the rollout controller, the admin API, the reloader,
the state directory); it starts first, and the others start once it serves, from its state.
The supervisor relays between them (`ipc.py`): the leader's state to every follower, the
followers' observations and counts to the leader, and tells the leader who is alive.

*Restarts.* A worker that exits while the supervisor is not stopping is restarted after a
back-off (0.5 s, doubling up to 30 s; back to 0.5 s after it served for a minute); a leader
that dies is restarted as the leader (it resumes the rollouts from the state directory) while
the followers keep serving with the last state they had. A leader that cannot start at all
(an invalid routing file, a port in use) stops start-up with its exit code.

*Signals.* SIGHUP goes to the leader (the reloads are its). SIGTERM or SIGINT: the supervisor
closes its copy of the listeners, forwards SIGTERM to every worker, and exits once all of them
have drained (each as a single process does: ``drain_delay``, then ``drain_timeout``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from splitproxy.dataplane.synthetic import TOKEN_ENV
from splitproxy.workers.ipc import (
    Channel,
    Checked,
    Counted,
    Hello,
    Members,
    Observed,
    Ready,
    StateUpdate,
)
from splitproxy.workers.listeners import Listeners

if TYPE_CHECKING:
    from splitproxy.settings import Settings

logger = logging.getLogger("splitproxy.workers")

BACKOFF_FIRST: Final = 0.5  # seconds before the first restart of a worker
BACKOFF_MAX: Final = 30.0
STABLE_AFTER: Final = 60.0  # a worker that served this long starts its back-off anew


@dataclass
class Slot:
    """One worker's place: the process now in it, and its restart history."""

    index: int
    process: asyncio.subprocess.Process | None = None
    channel: Channel | None = None
    pid: int = 0
    ready: bool = False
    backoff: float = BACKOFF_FIRST
    task: asyncio.Task[None] | None = None
    started: asyncio.Event = field(default_factory=asyncio.Event)  # first Ready, or exit

    @property
    def leader(self) -> bool:
        return self.index == 0


class Supervisor:
    """Starts, relays between, restarts and stops the workers (see the module docstring)."""

    def __init__(self, settings: Settings, count: int) -> None:
        self.settings = settings
        self.slots = [Slot(i) for i in range(count)]
        addresses = {"proxy": settings.listen_address}
        if settings.preview_address is not None:
            addresses["preview"] = settings.preview_address
        self.listeners = Listeners(addresses, settings.admin_address)
        self.stopping = False
        self.restarts = 0
        self.state: StateUpdate | None = None  # the leader's latest, for a starting follower
        self._token = secrets.token_hex(16)  # the workers' shared synthetic-traffic token
        self._stop = asyncio.Event()

    async def run(self) -> int:
        """Serve until SIGTERM or SIGINT; the exit code."""
        try:
            self.listeners.check()
        except OSError as exc:
            print(f"splitproxy: cannot listen: {exc}", file=sys.stderr)
            self.listeners.close()
            return 1
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self._forward_hangup)
        leader = self.slots[0]
        leader.task = loop.create_task(self._keep(leader))
        await leader.started.wait()
        if not leader.ready:  # stopped before it served, or it could not start (it said why)
            asked = self.stopping
            self.stopping = True
            await leader.task
            self.listeners.close()
            code = leader.process.returncode if leader.process is not None else None
            return 0 if asked else code or 1
        for slot in self.slots[1:]:
            slot.task = loop.create_task(self._keep(slot))
        logger.info("supervisor %d: %d workers", os.getpid(), len(self.slots))
        await self._stop.wait()
        await self._shutdown()
        return 0

    def request_stop(self) -> None:
        if not self.stopping:
            logger.info("supervisor: stopping, draining every worker")
        self.stopping = True
        self._stop.set()
        for slot in self.slots:  # again on a second signal: each worker's own handler decides
            self._signal(slot, signal.SIGTERM)

    def _forward_hangup(self) -> None:
        self._signal(self.slots[0], signal.SIGHUP)

    @staticmethod
    def _signal(slot: Slot, signum: int) -> None:
        process = slot.process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signum)

    async def _shutdown(self) -> None:
        # no worker accepts any more once each closed its socket: a shared one, ours goes first
        self.listeners.close()
        tasks = [slot.task for slot in self.slots if slot.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        logger.info("supervisor: every worker drained")

    # -- one worker's life, over and over ---------------------------------------------------
    async def _keep(self, slot: Slot) -> None:
        while not self.stopping:
            started = time.monotonic()
            try:
                await self._spawn(slot)
                await self._relay(slot)
                assert slot.process is not None
                code = await slot.process.wait()
            except OSError as exc:  # could not even start a process
                logger.error("worker %d: cannot start: %s", slot.index, exc)
                code = -1
            finally:
                slot.started.set()
                self._gone(slot)
            if self.stopping:
                return
            if slot.leader and not slot.ready and self.restarts == 0 and self.state is None:
                return  # the first leader never served: start-up failed, `run` says so
            if time.monotonic() - started >= STABLE_AFTER:
                slot.backoff = BACKOFF_FIRST
            logger.warning(
                "worker %d (pid %d) exited with %s; restarting in %.1f s",
                slot.index, slot.pid, code, slot.backoff,
            )  # fmt: skip
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(slot.backoff):
                    await self._stop.wait()
            slot.backoff = min(BACKOFF_MAX, slot.backoff * 2)
            if not self.stopping:
                self.restarts += 1

    async def _spawn(self, slot: Slot) -> None:
        listeners = self.listeners.open(leader=slot.leader)
        ours, theirs = socket.socketpair()
        theirs.set_inheritable(True)
        fds = [theirs.fileno(), *(s.fileno() for s in listeners.values())]
        argv = [
            sys.executable, "-m", "splitproxy.workers.child", str(theirs.fileno()),
            *(f"{name}={sock.fileno()}" for name, sock in listeners.items()),
        ]  # fmt: skip
        try:
            slot.process = await asyncio.create_subprocess_exec(
                *argv,
                pass_fds=fds,
                stdin=asyncio.subprocess.DEVNULL,
                env={**os.environ, TOKEN_ENV: self._token},
            )
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
            self.listeners.handed(listeners)
        slot.pid = slot.process.pid
        slot.ready = False
        channel = slot.channel = await Channel.open(ours)
        channel.send(Hello(slot.index, slot.leader, self.settings))
        if not slot.leader and self.state is not None:
            channel.send(self.state)

    async def _relay(self, slot: Slot) -> None:
        """Pass the worker's messages on until it closes its channel (it exited)."""
        channel = slot.channel
        assert channel is not None
        while (message := await channel.receive()) is not None:
            if isinstance(message, Ready):
                slot.ready = True
                slot.started.set()
                self._members()
                if not slot.leader:
                    logger.info("worker %d (pid %d) serving", slot.index, slot.pid)
            elif isinstance(message, StateUpdate | Checked):
                if isinstance(message, StateUpdate):
                    self.state = message
                for other in self.slots[1:]:
                    if other.channel is not None:
                        other.channel.send(message)
            elif isinstance(message, Observed | Counted):
                leader = self.slots[0].channel
                if leader is not None and self.slots[0].ready:
                    leader.send(message, droppable=True)

    def _gone(self, slot: Slot) -> None:
        channel, slot.channel = slot.channel, None
        if channel is not None:
            asyncio.get_running_loop().create_task(channel.close())
        was_ready, slot.ready = slot.ready, False
        if was_ready:
            self._members()

    def _members(self) -> None:
        leader = self.slots[0]
        if leader.channel is None or not leader.ready:
            return
        pids = {s.index: s.pid for s in self.slots if s.ready}
        leader.channel.send(Members(pids, self.restarts))


def supervise(settings: Settings, count: int) -> int:
    """Run ``count`` workers until SIGTERM or SIGINT; the exit code for the CLI."""

    async def main() -> int:
        return await Supervisor(settings, count).run()

    with asyncio.Runner() as runner:
        return runner.run(main())
