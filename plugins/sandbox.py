"""In-process confinement of a plugin process: rlimits, parent-death signal, Landlock.

Called by :mod:`plugins.runner` in the child, *before* any plugin code is imported.

* ``resource.setrlimit``: RLIMIT_CPU (soft = the budget, hard = budget + 2 s: SIGXCPU
  then SIGKILL), RLIMIT_AS (address space), RLIMIT_CORE 0 (no core dumps of plugin
  memory), RLIMIT_NOFILE 256.
* ``prctl(PR_SET_PDEATHSIG, SIGKILL)``: the plugin dies with the node, even on kill -9.
* Landlock (Linux >= 5.13, unprivileged): the process may read and execute only under
  the given read-only roots (the Python installation, the packages it imports, the
  plugin's own package) and write only under its scratch directory. Everything else —
  the node's home and data directory, the HSM token directory, ``/proc`` (so not the
  node's ``/proc/<pid>/environ``) — is denied by the kernel. It also may not ptrace
  processes outside its domain, and, from Landlock ABI 6, may not signal them or reach
  their abstract Unix sockets; from ABI 4, TCP bind/connect are denied unless
  ``allow_network``.
* seccomp (:func:`restrict_sockets`): ``socket()`` is refused for every address family
  but IPv4/IPv6 (and those only with ``allow_network``), so no Unix socket — the node's
  control socket — whatever Landlock can or cannot say about socket paths.

Landlock and seccomp are best effort: where the kernel or machine lacks them, the
functions return a reason, the runner reports it in its ``hello`` and the host logs a
warning (the plugin still runs in its own process, with a clean environment and its
own working directory, but can read what the node user can read).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import resource
import signal
import socket
import struct
from collections.abc import Iterable

__all__ = ["landlock", "restrict_sockets", "set_limits", "set_parent_death_signal"]

_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446
_PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS = 1, 38
_RULE_PATH_BENEATH = 1
_CREATE_RULESET_VERSION = 1

_EXECUTE, _WRITE_FILE, _READ_FILE, _READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FS_V1 = (1 << 13) - 1
_REFER, _TRUNCATE, _IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_FILE_ONLY = _EXECUTE | _WRITE_FILE | _READ_FILE | _TRUNCATE | _IOCTL_DEV
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1
_SCOPE_ABSTRACT_UNIX, _SCOPE_SIGNAL = 1 << 0, 1 << 1


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64),
                ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def set_limits(*, cpu_seconds: int, memory_bytes: int, nofile: int = 256) -> None:
    """Apply the resource limits to this process (lower-only: never raises a limit)."""
    def lower(which: int, soft: int, hard: int) -> None:
        cur_soft, cur_hard = resource.getrlimit(which)
        if cur_hard != resource.RLIM_INFINITY:
            hard = min(hard, cur_hard)
        resource.setrlimit(which, (min(soft, hard), hard))

    lower(resource.RLIMIT_CPU, cpu_seconds, cpu_seconds + 2)
    lower(resource.RLIMIT_AS, memory_bytes, memory_bytes)
    lower(resource.RLIMIT_CORE, 0, 0)
    lower(resource.RLIMIT_NOFILE, nofile, nofile)


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def set_parent_death_signal() -> bool:
    """SIGKILL this process when its parent dies. Returns False where unsupported."""
    try:
        return _libc().prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def landlock(read_only: Iterable[str], writable: Iterable[str], *,
             allow_network: bool) -> str:
    """Restrict this process with Landlock. Returns ``"landlock-v<abi>"`` when applied,
    else ``"none: <reason>"``. Paths that do not exist are skipped."""
    try:
        libc = _libc()
    except OSError as exc:
        return f"none: {exc}"
    syscall = libc.syscall
    syscall.restype = ctypes.c_long
    abi = syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0),
                  ctypes.c_uint32(_CREATE_RULESET_VERSION))
    if abi < 1:
        return f"none: Landlock unavailable ({os.strerror(ctypes.get_errno())})"
    fs = _FS_V1 | (_REFER if abi >= 2 else 0) | (_TRUNCATE if abi >= 3 else 0)
    fs |= _IOCTL_DEV if abi >= 5 else 0
    attr = _RulesetAttr(fs, 0, 0)
    size = 8
    if abi >= 4:
        size = 16
        if not allow_network:
            attr.handled_access_net = _NET_BIND_TCP | _NET_CONNECT_TCP
    if abi >= 6:
        size = 24
        attr.scoped = _SCOPE_ABSTRACT_UNIX | _SCOPE_SIGNAL
    ruleset = syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size),
                      ctypes.c_uint32(0))
    if ruleset < 0:
        return f"none: landlock_create_ruleset: {os.strerror(ctypes.get_errno())}"
    try:
        ro = _EXECUTE | _READ_FILE | _READ_DIR
        for path in sorted(set(read_only)):
            _add_rule(syscall, ruleset, path, ro & fs)
        for path in sorted(set(writable)):
            _add_rule(syscall, ruleset, path, fs & ~_IOCTL_DEV)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            return f"none: PR_SET_NO_NEW_PRIVS: {os.strerror(ctypes.get_errno())}"
        if syscall(_SYS_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
            return f"none: landlock_restrict_self: {os.strerror(ctypes.get_errno())}"
    finally:
        os.close(ruleset)
    return f"landlock-v{abi}"


def _add_rule(syscall, ruleset: int, path: str, access: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return
    try:
        if not os.path.isdir(path):
            access &= _FILE_ONLY
        rule = _PathBeneath(access, fd)
        syscall(_SYS_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(_RULE_PATH_BENEATH),
                ctypes.byref(rule), ctypes.c_uint32(0))
    finally:
        os.close(fd)


# ---- seccomp: which sockets a plugin may create ----------------------------------------
_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 22, 2
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_LD_ABS_W, _JEQ_K, _JGE_K, _RET_K = 0x20, 0x15, 0x35, 0x06
#: (AUDIT_ARCH, __NR_socket, __NR_io_uring_setup, has the x32 ABI) per machine.
_ARCHES = {"x86_64": (0xC000003E, 41, 425, True), "aarch64": (0xB7 | 0xC0000000, 198, 425,
                                                               False)}


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _socket_filter(arch: int, nr_socket: int, nr_uring: int, x32: bool,
                   families: tuple[int, ...]) -> bytes:
    deny, nosys = _RET_ERRNO | errno.EACCES, _RET_ERRNO | errno.ENOSYS
    prog = [(_LD_ABS_W, 0, 0, 4), (_JEQ_K, 1, 0, arch), (_RET_K, 0, 0, nosys),
            (_LD_ABS_W, 0, 0, 0)]
    if x32:
        prog += [(_JGE_K, 0, 1, 0x40000000), (_RET_K, 0, 0, nosys)]
    prog += [(_JEQ_K, 0, 1, nr_uring), (_RET_K, 0, 0, nosys),  # io_uring can make sockets
             (_JEQ_K, 1, 0, nr_socket), (_RET_K, 0, 0, _RET_ALLOW),
             (_LD_ABS_W, 0, 0, 16)]  # args[0] (low 32 bits): the address family
    for family in families:
        prog += [(_JEQ_K, 0, 1, family), (_RET_K, 0, 0, _RET_ALLOW)]
    prog.append((_RET_K, 0, 0, deny))
    return b"".join(struct.pack("=HBBI", *ins) for ins in prog)


def restrict_sockets(*, allow_network: bool) -> str:
    """Install a seccomp filter: ``socket()`` fails with EACCES for every address family
    except AF_INET/AF_INET6 when ``allow_network`` (so never AF_UNIX: the node's control
    socket is out of reach, whatever its path; never UDP or raw sockets without
    ``network``). ``socketpair()`` stays allowed (asyncio needs it), io_uring and foreign
    syscall ABIs are refused. Returns ``"seccomp"`` or ``"no seccomp: <reason>"``."""
    spec = _ARCHES.get(platform.machine())
    if spec is None:
        return f"no seccomp: unsupported machine {platform.machine()}"
    families = (socket.AF_INET, socket.AF_INET6) if allow_network else ()
    code = _socket_filter(*spec, families)
    buf = ctypes.create_string_buffer(code, len(code))
    prog = _SockFprog(len(code) // 8, ctypes.addressof(buf))
    libc = _libc()
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return f"no seccomp: PR_SET_NO_NEW_PRIVS: {os.strerror(ctypes.get_errno())}"
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        return f"no seccomp: {os.strerror(ctypes.get_errno())}"
    return "seccomp"
