"""The workers' listening sockets, opened by the supervisor.

With ``SO_REUSEPORT`` (Linux, the BSDs): one socket per worker, all bound to the same
address; the kernel spreads new connections over them by a hash of the connection, so each
worker gets its share whatever the others are doing. (With one socket shared by all, the worker
that happens to be awake takes the next connection: an idle proxy that receives one connection
after another hands nearly all of them to the same worker.) The supervisor binds every socket
itself, so a port of 0 means one port for all, and it first binds the address once without
``SO_REUSEPORT``: a port that another process (an older splitproxy, say) listens on fails at
start-up instead of silently sharing its traffic.

The supervisor keeps no copy of a worker's socket: when the worker exits, its socket closes and
the kernel sends new connections to the others only. Connections it had queued but not
accepted are reset, unless the kernel moves them to another socket of the group (Linux
``net.ipv4.tcp_migrate_req=1``). A restarted worker gets a new socket in the group.

Without ``SO_REUSEPORT``, every worker inherits one shared socket (kept open by the supervisor
until it stops).
"""

from __future__ import annotations

import socket
from typing import Final

BACKLOG: Final = 4096
REUSEPORT: Final = hasattr(socket, "SO_REUSEPORT")


def bind(address: tuple[str, int], *, reuse_port: bool, backlog: int = BACKLOG) -> socket.socket:
    """A listening TCP socket on ``address``, inheritable by a worker."""
    host, port = address
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
        sock.listen(backlog)
        sock.setblocking(False)
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock


class Listeners:
    """The listening sockets of the workers: for each served address (``proxy``, and
    ``preview`` when set) one per worker, or one shared; and the admin API's, one socket the
    supervisor keeps for the leader, so a restarted leader answers on the same port (and a
    client that connects meanwhile waits in the backlog instead of being refused)."""

    def __init__(
        self,
        served: dict[str, tuple[str, int]],
        admin: tuple[str, int],
        *,
        reuse_port: bool = REUSEPORT,
    ) -> None:
        self.reuse_port = reuse_port
        self._addresses = dict(served)
        self._admin_address = admin
        self._shared: dict[str, socket.socket] = {}

    def check(self) -> None:
        """Bind each address once, on its own: `OSError` when something listens there
        already; fixes a port of 0 to the one the kernel gave."""
        for name, address in self._addresses.items():
            sock = bind(address, reuse_port=False)
            self._addresses[name] = sock.getsockname()[:2]
            if self.reuse_port:
                sock.close()
            else:
                self._shared[name] = sock
        self._shared["admin"] = bind(self._admin_address, reuse_port=False)

    def open(self, *, leader: bool) -> dict[str, socket.socket]:
        """The sockets for a worker about to start (new ones, with ``SO_REUSEPORT``; the
        admin API's for the leader); pass them to `handed` once the worker has them."""
        opened: dict[str, socket.socket] = {}
        if leader:
            opened["admin"] = self._shared["admin"]
        if not self.reuse_port:
            opened.update((n, s) for n, s in self._shared.items() if n != "admin")
            return opened
        try:
            for name, address in self._addresses.items():
                opened[name] = bind(address, reuse_port=True)
        except OSError:
            self.handed(opened)
            raise
        return opened

    def handed(self, sockets: dict[str, socket.socket]) -> None:
        """A worker holds ``sockets`` now (or failed to start). The supervisor keeps no copy
        of a worker's own socket: it closes when the worker exits, and the kernel stops
        sending it connections. The shared ones stay."""
        shared = set(map(id, self._shared.values()))
        for sock in sockets.values():
            if id(sock) not in shared:
                sock.close()

    def close(self) -> None:
        """No worker will start any more: the shared sockets go (the workers keep their
        copies until they have drained)."""
        for sock in self._shared.values():
            sock.close()
        self._shared.clear()
