"""vproxy for Python: a load balancer and proxy toolkit.

The importable API (SPEC "Library use"): build event-loop groups, server groups and
upstreams, and start a tcp-lb over them in a few lines::

    from vproxy import TcpLB, ServerGroup, Upstream, EventLoopGroup

See README.md for a complete example.
"""

from vproxy.app.tcp_lb import TcpLB, start_tcp_lb
from vproxy.component.health_check import HealthCheckConfig
from vproxy.component.server_group import Method, Server, ServerGroup
from vproxy.component.upstream import Upstream
from vproxy.net.event_loop import EventLoop, EventLoopGroup

__all__ = [
    "EventLoop",
    "EventLoopGroup",
    "HealthCheckConfig",
    "Method",
    "Server",
    "ServerGroup",
    "TcpLB",
    "Upstream",
    "start_tcp_lb",
]

__version__ = "0.1.0"
