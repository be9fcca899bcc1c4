"""What the kernel holds a plugin process to (`Confinement`): limits, user and groups, no_new_privileges,
resolved in the runtime before fork and applied in the forked child before exec."""

from __future__ import annotations

import ctypes
import errno
import os
import resource
from dataclasses import dataclass
from typing import Final

from ..manifest import CPU_KILL_AFTER, PluginSpec, group_entry, passwd_entry
from .env import die_with_parent, libc

_PR_SET_NO_NEW_PRIVS: Final = 38


class SetupFailed(OSError):
    """A step of the child's setup before exec failed (`step` says which, e.g. "set limits.open_files to 9")."""

    def __init__(self, code: int, step: str, reason: str = "") -> None:
        super().__init__(code, reason or os.strerror(code))
        self.step = step


def reason(exc: BaseException) -> str:
    """What went wrong, in the system's words where it has them ("Operation not permitted")."""
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__


@dataclass(frozen=True, slots=True)
class Confinement:
    """What the kernel holds a plugin process to: resolved in the runtime, applied in the forked child.

    Everything is looked up before fork (user names, groups), so that the child only makes system calls.
    """

    rlimits: tuple[tuple[str, int, int, int], ...] = ()
    """(step, resource, soft, hard) for each limit set."""
    uid: int | None = None
    gid: int | None = None
    groups: tuple[int, ...] = ()
    no_new_privs: bool = True
    env: tuple[tuple[str, str], ...] = ()
    """HOME, USER and LOGNAME of the user switched to."""

    @classmethod
    def of(cls, spec: PluginSpec) -> Confinement:
        """Resolve `spec`'s limits and identity now; ValueError if its user or group is gone since it was read."""
        rlimits = [
            (f"set limits.{key} to {value}", res, value, value + extra)
            for key, res, value, extra in (
                ("memory", resource.RLIMIT_DATA, spec.limits.memory, 0),
                ("open_files", resource.RLIMIT_NOFILE, spec.limits.open_files, 0),
                ("processes", resource.RLIMIT_NPROC, spec.limits.processes, 0),
                ("cpu_seconds", resource.RLIMIT_CPU, spec.limits.cpu_seconds, CPU_KILL_AFTER),
            )
            if value
        ]
        uid = gid = None
        groups: tuple[int, ...] = ()
        env: tuple[tuple[str, str], ...] = ()
        if spec.user is not None:
            entry = passwd_entry(spec.user)
            if entry is None and not spec.user.isdigit():
                raise ValueError(f"user {spec.user!r} no longer exists")
            uid = entry.pw_uid if entry is not None else int(spec.user)
            if entry is not None:
                gid = entry.pw_gid
                groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
                env = (("HOME", entry.pw_dir), ("USER", entry.pw_name), ("LOGNAME", entry.pw_name))
        if spec.group is not None:
            gentry = group_entry(spec.group)
            if gentry is None and not spec.group.isdigit():
                raise ValueError(f"group {spec.group!r} no longer exists")
            gid = gentry.gr_gid if gentry is not None else int(spec.group)
            groups = (gid,)
        if gid is not None and not groups:
            groups = (gid,)
        return cls(tuple(rlimits), uid, gid, groups, spec.no_new_privileges, env)

    def apply(self) -> None:
        """In the child, before exec: limits first (raising one needs the root we may drop), then
        groups, group and user, then no_new_privs. Raises `SetupFailed` naming the step."""
        step = ""
        try:
            for step, res, soft, hard in self.rlimits:  # noqa: B007 - `step` names the failing one below
                resource.setrlimit(res, (soft, hard))
            if self.gid is not None:
                step = f"switch to groups {list(self.groups)}"
                os.setgroups(list(self.groups))
                step = f"switch to gid {self.gid}"
                os.setgid(self.gid)
            if self.uid is not None:
                step = f"switch to uid {self.uid}"
                os.setuid(self.uid)
            if self.no_new_privs and libc is not None:
                step = "set no_new_privileges"
                if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
                    raise OSError(ctypes.get_errno(), "prctl")
        except Exception as exc:  # OverflowError too: an id or limit past what the C call takes
            raise SetupFailed(getattr(exc, "errno", None) or errno.EINVAL, step, reason(exc)) from None


def exec_setup(confinement: Confinement, parent_pid: int) -> None:
    """The child-side setup of one exec-mode execution: a step that fails is its error text, exit 126."""
    try:
        confinement.apply()
    except SetupFailed as exc:
        os.write(2, f"plugrpc: cannot {exc.step}: {exc.strerror}\n".encode())
        os._exit(126)
    die_with_parent(parent_pid)
