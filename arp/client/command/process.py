"""Running one agent CLI turn: its own process group, stdout read by lines, stderr drained."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

from twisted.internet import error
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

#: The wrapper's exit code when the project directory moved between the check and the start.
MOVED_EXIT = 125
#: Started with ``sys.executable -c CODE EXPECTED_CWD ARGV...`` in the project directory: check that
#: the directory entered is the one that was validated (``os.getcwd()`` names the directory itself,
#: so a directory swapped for a symlink after the check is caught here, with no window left), then
#: become a session (and process group) leader and exec the agent, so that cancelling can signal
#: every process the agent started.  Exit code :data:`MOVED_EXIT` when the directory moved.
SETSID_EXEC = f"""\
import os, sys
if os.getcwd() != sys.argv[1]:
    sys.stderr.write("arpc: refusing to start the agent: the project directory " + sys.argv[1]
                     + " now resolves to " + os.getcwd() + "\\n")
    sys.exit({MOVED_EXIT})
os.setsid()
os.execvp(sys.argv[2], sys.argv[2:])
"""
MAX_LINE = 8 * 1024 * 1024
MAX_PROBE_OUTPUT = 4096  # bytes kept of a ``--version`` answer
LINGER = 5.0  # after the agent exits, how long grandchildren may keep its pipes open


def group_alive(pgid: int) -> bool:
    """Whether process group ``pgid`` has a live (non-zombie) member."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not os.path.isdir("/proc/self"):
        return True
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


class AgentProcess(ProcessProtocol):
    """One spawned agent.  Calls ``on_line`` per stdout line, ``on_stderr`` per stderr chunk,
    and ``on_end(exit_code, signal)`` once the process has ended and its pipes are closed."""

    log = Logger()

    def __init__(
        self,
        clock: object,
        on_line: Callable[[bytes], None],
        on_stderr: Callable[[bytes], None],
        on_end: Callable[[int | None, int | None], None],
    ) -> None:
        self.clock = clock
        self.on_line = on_line
        self.on_stderr = on_stderr
        self.on_end = on_end
        self._buffer = bytearray()
        self._skipping = False
        self.ended = False
        self.pgid: int | None = None
        self._waiters: list[Deferred] = []
        self._linger = None
        self._escalation: list = []
        self._watch: LoopingCall | None = None

    def spawn(
        self, reactor: object, argv: list[str], env: dict[str, str], cwd: str, keep_stdin: bool = False
    ) -> None:
        """Start ``argv`` in ``cwd`` with no TTY, as a process group leader; stdin is closed unless
        ``keep_stdin`` (an interactive channel: :meth:`write` lines, then :meth:`close_stdin`).

        ``cwd`` must be a resolved path (no symlinks): the agent starts only if the directory it
        lands in still is ``cwd`` (else the wrapper exits :data:`MOVED_EXIT` with a message).
        """
        reactor.spawnProcess(  # type: ignore[attr-defined]
            self,
            sys.executable,
            [sys.executable, "-c", SETSID_EXEC, cwd, *argv],
            env=env,
            path=cwd,
            usePTY=False,
            childFDs={0: "w", 1: "r", 2: "r"},
        )
        self.pgid = self.transport.pid
        if not keep_stdin:
            self.transport.closeStdin()

    def write(self, data: bytes) -> None:
        """Send ``data`` to the agent's stdin (dropped once the agent has ended)."""
        if not self.ended and self.transport is not None:
            self.transport.write(data)

    def close_stdin(self) -> None:
        """Close the agent's stdin: an interactive CLI exits when its input ends."""
        if not self.ended and self.transport is not None:
            self.transport.closeStdin()

    @property
    def pid(self) -> int | None:
        return self.pgid

    def outReceived(self, data: bytes) -> None:
        self._buffer += data
        while True:
            i = self._buffer.find(b"\n")
            if i < 0:
                break
            line = bytes(self._buffer[:i])
            del self._buffer[: i + 1]
            if self._skipping:
                self._skipping = False
                continue
            self.on_line(line)
        if len(self._buffer) > MAX_LINE:
            self.log.warn("agent printed a line over {n} bytes; dropping it", n=MAX_LINE)
            self._buffer.clear()
            self._skipping = True

    def errReceived(self, data: bytes) -> None:
        self.on_stderr(data)

    def processExited(self, reason: Failure) -> None:
        if not self.ended:
            self._linger = self.clock.callLater(LINGER, self._close_pipes)  # type: ignore[attr-defined]

    def _close_pipes(self) -> None:
        self._linger = None
        if not self.ended and self.transport is not None:
            self.log.info("agent exited but its children hold its output open; closing it")
            self.transport.loseConnection()

    def processEnded(self, reason: Failure) -> None:
        self.ended = True
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        if self._buffer and not self._skipping:
            self.on_line(bytes(self._buffer))
        self._buffer.clear()
        code = sig = None
        if reason.check(error.ProcessDone, error.ProcessTerminated):
            code = reason.value.exitCode
            sig = reason.value.signal
        self.on_end(code, sig)
        self._check_group()

    # -- cancelling ---------------------------------------------------------------------

    def group_alive(self) -> bool:
        """Whether any process of the agent's group is still running (zombies do not count)."""
        return self.pgid is not None and group_alive(self.pgid)

    def _signal_group(self, signum: int) -> None:
        if self.pgid is None:
            return
        try:
            os.killpg(self.pgid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def terminate(self, grace: float = 2.0) -> Deferred[None]:
        """SIGINT the agent's whole process group, then SIGTERM, then SIGKILL, ``grace`` seconds apart.

        Fires once the agent has ended and its group is empty (or has been sent SIGKILL).
        """
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        if not self._escalation:
            self._signal_group(signal.SIGINT)
            self._escalation = [
                self.clock.callLater(grace, self._step, signal.SIGTERM),  # type: ignore[attr-defined]
                self.clock.callLater(2 * grace, self._step, signal.SIGKILL),  # type: ignore[attr-defined]
            ]
            self._watch = LoopingCall(self._check_group)
            self._watch.clock = self.clock
            self._watch.start(0.05, now=False)
        return d

    def _step(self, signum: int) -> None:
        if self.group_alive():
            self._signal_group(signum)
        if signum == signal.SIGKILL:
            self._killed = True
            self._check_group()

    def _check_group(self) -> None:
        if not self._waiters or not self.ended:
            return
        if self.group_alive() and not getattr(self, "_killed", False):
            return
        for call in self._escalation:
            if call.active():
                call.cancel()
        if self._watch is not None and self._watch.running:
            self._watch.stop()
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)


class _Probe(ProcessProtocol):
    """Collects the start of a short command's stdout; fires ``done`` with it (None on failure)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.done: Deferred[bytes | None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        room = MAX_PROBE_OUTPUT - len(self.data)
        if room > 0:
            self.data += data[:room]

    def processEnded(self, reason: Failure) -> None:
        if not self.done.called:
            ok = reason.check(error.ProcessDone) is not None
            self.done.callback(bytes(self.data) if ok else None)


def probe_output(
    reactor: object, argv: list[str], env: dict[str, str], timeout: float = 15.0
) -> Deferred[bytes | None]:
    """What ``argv`` (say ``gemini --version``) prints on stdout, at most :data:`MAX_PROBE_OUTPUT`
    bytes; None if it cannot start, fails, or is not done within ``timeout`` seconds (then it is
    killed).  Never fails."""
    probe = _Probe()
    try:
        reactor.spawnProcess(probe, argv[0], argv, env=env, usePTY=False, childFDs={0: "w", 1: "r", 2: "r"})  # type: ignore[attr-defined]
    except OSError:
        return succeed(None)
    probe.transport.closeStdin()

    def late() -> None:
        if not probe.done.called:
            probe.done.callback(None)
            try:
                probe.transport.signalProcess("KILL")
            except error.ProcessExitedAlready:
                pass

    call = reactor.callLater(timeout, late)  # type: ignore[attr-defined]
    probe.done.addBoth(lambda result: (call.cancel() if call.active() else None, result)[1])
    return probe.done
