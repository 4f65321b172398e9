"""Hand a closed listener's queued connections to the rest of its SO_REUSEPORT group.

With ``workers N`` every process listens on the same port (``SO_REUSEPORT``) and the
kernel spreads new connections over the sockets by a hash. A connection that
finished its handshake but still waits in the accept queue of a socket that closes
(its worker died, or stopped) is reset, unless the kernel migrates it to another
socket of the group: it does when ``net.ipv4.tcp_migrate_req`` is 1 (off by
default), or when the group has a BPF program of the
``BPF_SK_REUSEPORT_SELECT_OR_MIGRATE`` kind (Linux 5.14+).

Owns: that program. Two instructions, ``return SK_PASS`` without choosing a socket,
so the kernel's own hash still picks the socket for every new connection (the
program changes nothing there) and, for a migration, another socket of the group.
It is loaded with the ``bpf(2)`` system call for each ``SO_REUSEPORT`` listener,
attached with ``SO_ATTACH_REUSEPORT_EBPF`` (the group holds it from then on) and its
descriptor closed: no descriptor stays open for it. Loading needs
``CAP_BPF`` (or root) and a kernel that knows the attach type; without them nothing
is attached, once said at debug level, and the sysctl is the operator's remedy.
``VPROXY_REUSEPORT_MIGRATE=0`` in the environment turns it off (no BPF program is
loaded).

Must not: change where new connections go.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import platform
import socket
import struct
from typing import Final

__all__ = ["attach", "migrating"]

_log = logging.getLogger("vproxy.net")

_BPF_SYSCALL: Final = {"x86_64": 321, "aarch64": 280}.get(platform.machine(), -1)
_BPF_PROG_LOAD: Final = 5
_BPF_PROG_TYPE_SK_REUSEPORT: Final = 21
_BPF_SK_REUSEPORT_SELECT_OR_MIGRATE: Final = 40
_SO_ATTACH_REUSEPORT_EBPF: Final = 52
_SK_PASS: Final = 1
#: r0 = SK_PASS; exit
_PROGRAM: Final = struct.pack("<BBhi", 0xB7, 0, 0, _SK_PASS) + struct.pack("<BBhi", 0x95, 0, 0, 0)

_attached = False  # a program was attached in this process
# why it cannot be loaded here (then never tried again)
_failed: str | None = (
    "turned off (VPROXY_REUSEPORT_MIGRATE=0)"
    if os.environ.get("VPROXY_REUSEPORT_MIGRATE", "1") == "0"
    else None
)


def _load() -> int:
    """Load the program; raises OSError."""
    if _BPF_SYSCALL < 0:
        raise OSError(errno.ENOSYS, f"no bpf system call number for {platform.machine()}")
    libc = ctypes.CDLL(None, use_errno=True)
    insns = ctypes.create_string_buffer(_PROGRAM, len(_PROGRAM))
    license_ = ctypes.create_string_buffer(b"GPL")
    # union bpf_attr for BPF_PROG_LOAD, up to expected_attach_type (offset 68)
    attr = struct.pack(
        "<IIQQIIQII16sII",
        _BPF_PROG_TYPE_SK_REUSEPORT,
        len(_PROGRAM) // 8,
        ctypes.addressof(insns),
        ctypes.addressof(license_),
        0,  # log_level
        0,  # log_size
        0,  # log_buf
        0,  # kern_version
        0,  # prog_flags
        b"vproxy_migrate",
        0,  # prog_ifindex
        _BPF_SK_REUSEPORT_SELECT_OR_MIGRATE,
    )
    buf = ctypes.create_string_buffer(attr, 128)
    fd = int(libc.syscall(_BPF_SYSCALL, _BPF_PROG_LOAD, buf, 128))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return fd


def attach(sock: socket.socket) -> bool:
    """Make ``sock``'s ``SO_REUSEPORT`` group migrate the queued connections of a
    socket that closes. True if the program is attached; False (nothing changed) where
    it cannot be loaded or attached."""
    global _attached, _failed
    if _failed is not None:
        return False
    try:
        fd = _load()
    except OSError as exc:
        _failed = exc.strerror or str(exc)
        _log.debug(
            "no SO_REUSEPORT migration program (%s): connections queued for a "
            "listener that closes are reset unless net.ipv4.tcp_migrate_req is 1",
            _failed,
        )
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_REUSEPORT_EBPF, fd)
    except OSError as exc:
        _log.debug("SO_ATTACH_REUSEPORT_EBPF on %s: %s", sock.getsockname(), exc)
        return False
    finally:
        os.close(fd)
    _attached = True
    return True


def migrating() -> bool:
    """Whether this process attached the program (its ``SO_REUSEPORT`` listeners
    carry it)."""
    return _attached
