"""The running application's resources, by name (SPEC §3.1 "Default resources").

Owns: the name → object maps of everything the command language manages (event-loop
groups, upstreams, server groups, tcp-lbs, controllers), the default resources made at
start, byte totals of ended sessions per tcp-lb, the process-wide access log and
health history (:class:`~vproxy.control.metrics.HealthBook`), and closing everything
in order.

Must not: parse or validate commands (the executor does) or do socket work itself.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol

from vproxy.app.access_log import AccessLog
from vproxy.app.socks5_server import Socks5Server
from vproxy.app.tcp_lb import TcpLB
from vproxy.component.cert_key import CertKey
from vproxy.component.security_group import SecurityGroup
from vproxy.component.server_group import ServerGroup
from vproxy.component.upstream import Upstream
from vproxy.control.metrics import HealthBook
from vproxy.net.event_loop import EventLoop, EventLoopGroup

__all__ = [
    "ACCEPTOR_ELG",
    "CONTROL_ELG",
    "DEFAULT_ELGS",
    "WORKER_ELG",
    "Application",
    "Controller",
]

_log = logging.getLogger("vproxy.control")

ACCEPTOR_ELG = "(acceptor-elg)"
WORKER_ELG = "(worker-elg)"
CONTROL_ELG = "(control-elg)"
DEFAULT_ELGS = (ACCEPTOR_ELG, WORKER_ELG, CONTROL_ELG)
_DEFAULT_LOOP = {
    ACCEPTOR_ELG: "(acceptor-el)",
    WORKER_ELG: "(worker-el)",
    CONTROL_ELG: "(control-el)",
}


class Controller(Protocol):
    """A RESP or HTTP controller as the application sees it."""

    name: str

    @property
    def address(self) -> tuple[str, int]: ...

    def stop(self) -> None: ...


class Application:
    """Everything one vproxy process runs, by name.

    All changes go through :class:`~vproxy.control.executor.Executor`, which holds
    :attr:`lock` while it works.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.event_loop_groups: dict[str, EventLoopGroup] = {}
        self.upstreams: dict[str, Upstream] = {}
        self.server_groups: dict[str, ServerGroup] = {}
        self.tcp_lbs: dict[str, TcpLB] = {}
        self.socks5_servers: dict[str, Socks5Server] = {}
        self.security_groups: dict[str, SecurityGroup] = {}
        self.cert_keys: dict[str, CertKey] = {}
        self.resp_controllers: dict[str, Controller] = {}
        self.http_controllers: dict[str, Controller] = {}
        self.shutdown_requested = threading.Event()
        self.health_book = HealthBook()
        # Set at start-up (``accessLog``); listeners created later get it too.
        self.access_log: AccessLog | None = None
        self._closed = False

    @classmethod
    def create_default(cls) -> Application:
        """An application with the default event-loop groups, one loop each."""
        app = cls()
        for name in DEFAULT_ELGS:
            g = EventLoopGroup(name)
            g.add(_DEFAULT_LOOP[name])
            app.event_loop_groups[name] = g
        return app

    @staticmethod
    def default_loop_name(group: str) -> str | None:
        """The loop a default group is created with, or None for other groups."""
        return _DEFAULT_LOOP.get(group)

    @property
    def control_el(self) -> EventLoop:
        """The loop controllers run on (the first of ``(control-elg)``)."""
        return self.event_loop_groups[CONTROL_ELG].next()

    def users_of_elg(self, name: str) -> list[str]:
        """What uses the event-loop group ``name`` (for refusing its removal)."""
        g = self.event_loop_groups.get(name)
        out: list[str] = []
        for lb in self.tcp_lbs.values():
            if lb.acceptor_elg is g or lb.worker_elg is g:
                out.append(f"tcp-lb {lb.name}")
        for s5 in self.socks5_servers.values():
            if s5.acceptor_elg is g or s5.worker_elg is g:
                out.append(f"socks5-server {s5.name}")
        for sg in self.server_groups.values():
            if sg.event_loop_group is g:
                out.append(f"server-group {sg.name}")
        if name == CONTROL_ELG and (self.resp_controllers or self.http_controllers):
            out.append("the controllers")
        return out

    def set_access_log(self, log: AccessLog | None) -> None:
        """Use ``log`` for every listener, present and future (None: off)."""
        self.access_log = log
        for lb in self.listeners():
            lb.access_log = log

    def listeners(self) -> list[TcpLB | Socks5Server]:
        """Every tcp-lb and socks5-server."""
        return [*self.tcp_lbs.values(), *self.socks5_servers.values()]

    def upstreams_of_group(self, name: str) -> list[Upstream]:
        """The upstreams that hold the server group ``name``."""
        return [u for u in self.upstreams.values() if any(h.group.name == name for h in u.groups)]

    def close(self) -> None:
        """Stop controllers, listeners, health checks and loops, in that order."""
        if self._closed:
            return
        self._closed = True
        ctrls: list[Any] = [*self.resp_controllers.values(), *self.http_controllers.values()]
        for c in ctrls:
            try:
                c.stop()
            except Exception:
                _log.exception("stopping controller %s", c.name)
        for lb in self.tcp_lbs.values():
            lb.stop(close_sessions=True)
        for s5 in self.socks5_servers.values():
            s5.stop(close_sessions=True)
        for sg in self.server_groups.values():
            sg.close()
        for g in self.event_loop_groups.values():
            g.close()
        if self.access_log is not None:
            self.access_log.close()  # after the loops: the last sessions are logged
