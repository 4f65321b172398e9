"""Upstreams (SPEC §1 "Upstream").

Owns: a named list of server groups, each with a weight; picking a group by smooth
WRR, or by the best match of a hint (HTTP Host / ``:authority``, TLS SNI, socks5
target) against each group's name or ``host`` annotation.

Must not: pick the server inside a group (that is the group's method) or do I/O.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Final

from vproxy.component import server_group
from vproxy.component.server_group import Server, ServerGroup, SmoothWrr

__all__ = ["GroupHandle", "Upstream", "UpstreamError", "hint_match_level", "normalize_host"]

MAX_GROUP_WEIGHT: Final = 10_000
MAX_CACHED_HINTS: Final = 1024
"""Distinct hints whose group ranking an upstream keeps (cleared when full)."""


class UpstreamError(ValueError):
    """A change to an upstream was refused."""


@dataclass(slots=True)
class GroupHandle:
    """A server group's membership in an upstream, with its weight there."""

    group: ServerGroup
    weight: int


def normalize_host(host: str) -> str:
    """Lower-case, strip a trailing dot and a ``:port`` (IPv6 brackets kept out)."""
    h = host.strip().lower()
    if h.startswith("["):  # [v6]:port
        end = h.find("]")
        return h[1:end] if end > 0 else h
    if h.count(":") == 1:
        h = h.split(":", 1)[0]
    return h.rstrip(".")


def hint_match_level(hint: str, host: str) -> int:
    """How well ``hint`` matches a group's ``host`` (both normalised).

    3: equal; 2: the hint is a subdomain of host; 1: host is a subdomain of the
    hint; 0: no match.
    """
    if not hint or not host:
        return 0
    if hint == host:
        return 3
    if hint.endswith("." + host):
        return 2
    if host.endswith("." + hint):
        return 1
    return 0


class Upstream:
    """A named, weighted list of server groups."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._handles: tuple[GroupHandle, ...] = ()
        self._wrr = SmoothWrr((), ())
        # the usable handles self._wrr was built over; None forces a rebuild
        self._wrr_over: tuple[GroupHandle, ...] | None = None
        # hint -> the members it matches, best first (see _ranked); valid while the
        # member tuple and the annotations epoch are the ones in _hints_for
        self._hints: dict[str, tuple[GroupHandle, ...]] = {}
        self._hints_for: tuple[tuple[GroupHandle, ...], int] = ((), -1)

    def __repr__(self) -> str:
        return f"Upstream({self.name!r}, {[(h.group.name, h.weight) for h in self._handles]})"

    @property
    def groups(self) -> tuple[GroupHandle, ...]:
        """The member groups with their weights."""
        return self._handles

    def add(self, group: ServerGroup, weight: int = 10) -> GroupHandle:
        """Add a server group with a weight."""
        _check_weight(weight)
        with self._lock:
            if any(h.group.name == group.name for h in self._handles):
                raise UpstreamError(f"server-group {group.name} is already in upstream {self.name}")
            handle = GroupHandle(group, weight)
            self._handles = (*self._handles, handle)
            self._rebuild()
            return handle

    def remove(self, name: str) -> ServerGroup:
        """Remove the group called ``name``; :class:`KeyError` if absent."""
        with self._lock:
            for h in self._handles:
                if h.group.name == name:
                    self._handles = tuple(x for x in self._handles if x is not h)
                    self._rebuild()
                    return h.group
        raise KeyError(name)

    def update(self, name: str, *, weight: int) -> None:
        """Change a member group's weight."""
        _check_weight(weight)
        with self._lock:
            for h in self._handles:
                if h.group.name == name:
                    h.weight = weight
                    self._rebuild()
                    return
        raise KeyError(name)

    def _rebuild(self) -> None:
        self._wrr_over = None  # membership or a weight changed: start a new cycle

    def find_server(self, host: str, port: int) -> Server | None:
        """The server of any member group listening at ``host:port``."""
        for h in self._handles:
            for s in h.group.servers:
                if s.port == port and s.host == host:
                    return s
        return None

    def select_group(self, hint: str | None = None) -> ServerGroup | None:
        """The group a connection goes to: best hint match, else WRR.

        Only groups with a healthy server and a weight above 0 are chosen: a hint
        that matches nothing usable falls back to WRR over the usable groups.
        """
        handles = self._handles
        if len(handles) == 1:
            # The common case (one group): whatever the hint, the choice is that
            # group if usable (a hint only orders groups), and the ranking, the lock
            # and the usable-set bookkeeping cost more than the choice.
            h0 = handles[0]
            return h0.group if h0.weight > 0 and h0.group.pickable else None
        if hint:
            for m in self._ranked(hint):
                if m.weight > 0 and m.group.pickable:
                    return m.group
        with self._lock:
            # WRR over the usable groups only: skipping unusable picks of a WRR over
            # all groups could miss a usable light group behind a long run of a heavy
            # unusable one. The WRR restarts whenever the usable set changes.
            usable = tuple(h for h in self._handles if _usable(h))
            over = self._wrr_over
            if (
                over is None
                or len(over) != len(usable)
                or any(a is not b for a, b in zip(over, usable, strict=True))
            ):
                self._wrr = SmoothWrr(usable, [h.weight for h in usable])
                self._wrr_over = usable
            h: GroupHandle | None = self._wrr.next()
        return None if h is None else h.group

    def match_group(self, hint: str) -> ServerGroup | None:
        """The group that best matches ``hint`` (no WRR fallback), or None."""
        return self._match(normalize_host(hint)) if hint else None

    def _ranked(self, hint: str) -> tuple[GroupHandle, ...]:
        """The members ``hint`` (as sent) matches, best first, whatever their health.

        Cached per hint: every L7 request carries one, and normalising and comparing
        each group's names per request cost more than choosing the server. Bounded:
        hints come from clients.
        """
        handles = self._handles
        key = self._hints_for
        epoch = server_group.annotations_epoch
        if key[0] is not handles or key[1] != epoch:
            self._hints = {}
            self._hints_for = (handles, epoch)
        hints = self._hints
        ranked = hints.get(hint)
        if ranked is None:
            if len(hints) >= MAX_CACHED_HINTS:
                hints.clear()
            ranked = hints[hint] = self._rank(normalize_host(hint), handles)
        return ranked

    @staticmethod
    def _rank(hint: str, handles: tuple[GroupHandle, ...]) -> tuple[GroupHandle, ...]:
        scored = []
        for i, h in enumerate(handles):
            g = h.group
            best = (0, -1)
            for cand in (g.annotations.get("host"), g.name):
                if cand:
                    c = normalize_host(cand)
                    best = max(best, (hint_match_level(hint, c), len(c)))
            if best[0]:
                scored.append((-best[0], -best[1], i, h))
        scored.sort(key=lambda x: x[:3])
        return tuple(x[3] for x in scored)

    def _match(self, hint: str) -> ServerGroup | None:
        best: ServerGroup | None = None
        best_level = 0
        best_len = -1
        for h in self._handles:
            g = h.group
            if not _usable(h):
                continue
            for cand in (g.annotations.get("host"), g.name):
                if not cand:
                    continue
                c = normalize_host(cand)
                level = hint_match_level(hint, c)
                if level > best_level or (level == best_level and level and len(c) > best_len):
                    best, best_level, best_len = g, level, len(c)
        return best

    def next(self, source: str | None = None, hint: str | None = None) -> Server | None:
        """A healthy server for a connection from ``source``, guided by ``hint``."""
        group = self.select_group(hint)
        if group is None:
            return None
        return group.next(source)


def _usable(h: GroupHandle) -> bool:
    """A group can take a connection: weight above 0 and a healthy server that can be picked."""
    return h.weight > 0 and h.group.pickable


def _check_weight(weight: int) -> None:
    if (
        not isinstance(weight, int)
        or isinstance(weight, bool)
        or not 0 <= weight <= MAX_GROUP_WEIGHT
    ):
        raise UpstreamError(f"weight must be an integer 0..{MAX_GROUP_WEIGHT}, got {weight!r}")
