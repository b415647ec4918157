"""The kernel's process events (the netlink proc connector): which processes ran another
program (exec) or changed their uid, told as it happens instead of looked for.

Facts read about a process hold while it runs, except its program (exec keeps the pid and
the start) and, for root's processes, its uid (root may give itself away). Looking at
``/proc/PID/exe`` and ``/proc/PID/status`` of every GPU process every cycle costs more than
the rest of a cycle on an unchanged machine; the kernel tells of exec and uid changes on a
netlink socket, so the daemon drains that socket once per cycle and reads again only the
processes named there.

It is used only where it is known to work: the socket needs root (CAP_NET_ADMIN) and the
initial pid namespace (elsewhere the kernel ignores the subscription, or its pids are not
ours), so ``open`` subscribes and then proves the subscription with a child that changes
its uid: only when that event arrives, naming the child's pid, is the source used. When
events may have been lost (the socket's buffer overflowed: ENOBUFS), ``drain`` says so, and
the caller looks at every process, as it does where the source is unavailable.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import struct
import sys
import time

from genv.system import logs

log = logs.logger("genv.system")

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
NLMSG_DONE = 3
PROC_CN_MCAST_LISTEN = 1
PROC_EVENT_EXEC = 0x00000002
PROC_EVENT_UID = 0x00000004
WANTED = PROC_EVENT_EXEC | PROC_EVENT_UID
SO_RCVBUFFORCE = 33
RECEIVE_BUFFER = 8 << 20  # events of a burst of execs, between two cycles
PROBE_UID = 65534  # nobody: what the probe child becomes (it only exits)
PROBE_TIMEOUT_S = 1.0
MAX_EVENTS_PER_DRAIN = 4096  # a few milliseconds of reading

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_CN_MSG = struct.Struct("=IIIIHH")  # idx, val, seq, ack, len, flags
_HEADER = _NLMSGHDR.size + _CN_MSG.size
_EVENT = struct.Struct("=IIQii")  # what, cpu, timestamp, process pid, process tgid
_MESSAGE = 256  # every proc event fits
SO_ATTACH_FILTER = 26  # (socket has no name for it)


def _only_wanted() -> bytes:
    """A classic BPF program for the socket: keep the messages whose event is an exec or a uid
    change, drop the rest (every fork and exit of every process on the machine, which a
    kernel before 6.6 sends whatever the subscription asked) before they are queued, so
    a busy machine costs the daemon nothing. Loads are big-endian, the events host-endian:
    the constant is swapped to match."""
    wanted = int.from_bytes(WANTED.to_bytes(4, sys.byteorder), "big")
    program = (
        (0x20, 0, 0, _HEADER),  # ld [what]   (BPF_LD | BPF_W | BPF_ABS)
        (0x45, 0, 1, wanted),  # jset #wanted, keep, drop   (BPF_JMP | BPF_JSET | BPF_K)
        (0x06, 0, 0, 0xFFFFFFFF),  # keep: ret #-1   (BPF_RET | BPF_K)
        (0x06, 0, 0, 0),  # drop: ret #0
    )
    return b"".join(struct.pack("=HBBI", *instruction) for instruction in program)


class ProcessEvents:
    """A subscription to exec and uid events; ``drain`` once per cycle."""

    def __init__(self, sock: socket.socket) -> None:
        self._socket = sock
        self._buffer = bytearray(_MESSAGE)
        # Asked first whether anything (an event, an error such as ENOBUFS) waits: a cycle
        # where nothing happened costs one poll, not a receive that fails.
        self._poller = select.poll()
        self._poller.register(sock.fileno(), select.POLLIN)
        self._failed = False  # the socket failed once: events are not trusted again

    @classmethod
    def open(cls) -> ProcessEvents | None:
        """A proven subscription, or None where the kernel does not tell (not root, another
        pid namespace, no connector): then every process must be looked at each cycle."""
        if os.geteuid() != 0 or not hasattr(socket, "AF_NETLINK"):
            return None
        # Kernels from 6.6 take the events wanted; older ones only the 4-byte form (and
        # ignore the longer one), so the filtered form is tried first, then the plain one.
        for filtered in (True, False):
            try:
                sock = _subscribe(filtered)
            except OSError as error:
                log.debug("no process events (%s): every GPU process is checked each cycle", error)
                return None
            events = cls(sock)
            if events._prove():
                return events
            events.close()
        log.debug("process events not delivered here: every GPU process is checked each cycle")
        return None

    def fileno(self) -> int:
        return self._socket.fileno()

    def drain(self) -> set[int] | None:
        """The processes (thread group ids) that ran another program or changed a uid since
        the last call; None when some events may have been lost (look at every process)."""
        changed: set[int] = set()
        if self._failed or not self._poller.poll(0):
            return None if self._failed else changed
        lost = False
        receive = self._socket.recv_into
        buffer = self._buffer
        # Any user can make events (fork, exec, prctl in a loop): at most this many are read
        # a cycle, then every GPU process is looked at instead; the cycle is never held up.
        for _ in range(MAX_EVENTS_PER_DRAIN):
            try:
                size = receive(buffer, _MESSAGE, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError as error:
                if error.errno == errno.ENOBUFS:
                    lost = True  # the kernel dropped events: what they said is unknown
                    continue
                log.warning(
                    "process events failed (%s): from now on every GPU process is checked "
                    "each cycle",
                    error,
                )
                self._failed = True
                return None
            found = _changed_process(buffer, size)
            if found is not None:
                changed.add(found)
        else:
            lost = True  # more were coming than a cycle reads
        return None if lost else changed

    def _prove(self) -> bool:
        """Whether an event about a child that changes its uid arrives, with its pid."""
        try:
            child = os.fork()
        except OSError:
            return False
        if child == 0:  # pragma: no cover - the child only changes its uid and exits
            try:
                os.setresuid(PROBE_UID, PROBE_UID, PROBE_UID)
            finally:
                os._exit(0)
        try:
            deadline = time.monotonic() + PROBE_TIMEOUT_S
            poller = select.poll()
            poller.register(self._socket.fileno(), select.POLLIN)
            while True:
                found = self.drain()
                if found is not None and child in found:
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                poller.poll(left * 1000)
        finally:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(child, 0)

    def close(self) -> None:
        self._socket.close()


def _subscribe(filtered: bool) -> socket.socket:
    sock = socket.socket(
        socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, NETLINK_CONNECTOR
    )
    try:
        with contextlib.suppress(OSError):  # root may make the buffer larger than the limit
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
        sock.bind((0, CN_IDX_PROC))
        _attach(sock, _only_wanted())
        payload = (
            struct.pack("=II", PROC_CN_MCAST_LISTEN, WANTED)
            if filtered
            else struct.pack("=I", PROC_CN_MCAST_LISTEN)
        )
        message = _CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(payload), 0) + payload
        header = _NLMSGHDR.pack(_NLMSGHDR.size + len(message), NLMSG_DONE, 0, 0, os.getpid())
        sock.send(header + message)
    except OSError:
        sock.close()
        raise
    return sock


def _attach(sock: socket.socket, program: bytes) -> None:
    """Attach a classic BPF ``program`` (struct sock_filter entries) to ``sock``: struct
    sock_fprog is its length and the address of its instructions."""
    import ctypes

    instructions = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("HL", len(program) // 8, ctypes.addressof(instructions))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def _changed_process(buffer: bytearray, size: int) -> int | None:
    """The thread group id an exec or uid event is about; None for any other message."""
    if size < _HEADER + _EVENT.size:
        return None
    idx, val = struct.unpack_from("=II", buffer, _NLMSGHDR.size)
    if idx != CN_IDX_PROC or val != CN_VAL_PROC:
        return None
    what, _, _, _, tgid = _EVENT.unpack_from(buffer, _HEADER)
    if what & WANTED and tgid > 0:
        return int(tgid)
    return None
