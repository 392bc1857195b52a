"""A ``ThrowawayServer`` whose process runs in the foreground as a child of the test process.

``PostgresServer`` lets ``pg_ctl`` daemonize the postmaster; servers without such a tool
(``mariadbd``, ``pgbouncer``) are started here with ``subprocess.Popen`` instead, through
``runuser`` when we are root. Keeping them as children means every process is reaped (a
daemon orphaned to a container's PID 1 may stay a zombie forever) and an early exit is seen at
once.
"""

from __future__ import annotations

import abc
import os
import resource
import shutil
import signal
import subprocess

from .servers import ThrowawayServer, _child_pids, _pid_alive, _wait_gone

STOP_TIMEOUT = 30.0


class SpawnedServer(ThrowawayServer):
    """Runs ``_server_argv()`` as a child process; stderr is appended to ``logfile``.

    Subclasses implement ``_server_argv``, ``_wait_ready`` and ``logfile`` (and usually
    ``_initialize``); ``_stop_signal(mode)`` picks the signal for ``stop(mode)``.
    """

    _proc: subprocess.Popen[bytes] | None = None
    _pid: int | None = None

    @abc.abstractmethod
    def _server_argv(self) -> list[str]: ...

    def _stop_signal(self, mode: str) -> signal.Signals:
        return signal.SIGKILL if mode == "immediate" else signal.SIGTERM

    def _launch(self) -> None:
        self._reap()
        if not self.logfile.exists():
            self.logfile.touch()
            self._chown(self.logfile)
        # Drop PG*/MYSQL* variables so the developer's client settings cannot leak in.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "MYSQL"))}
        argv = self._server_argv()
        # runuser's PAM session resets the soft fd limit to 1024; servers need one fd per
        # connection and do not all raise the limit themselves (mariadbd asks for more than the
        # hard limit and then keeps 1024), so start them with soft = hard.
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        if self.os_user is not None and hard != resource.RLIM_INFINITY and shutil.which("prlimit"):
            argv = ["prlimit", f"--nofile={hard}:{hard}", *argv]  # prlimit execs: same pid
        with self.logfile.open("ab") as log:
            self._proc = subprocess.Popen(
                self._command(argv),
                cwd=self.tmpdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # a Ctrl-C in the terminal must not reach the server
            )
        self._pid = None

    def _proc_alive(self) -> bool:
        """The child (``runuser`` or the server itself) has not exited; it is reaped if it has."""
        return self._proc is not None and self._proc.poll() is None

    def _server_pid(self) -> int | None:
        if not self._proc_alive():
            return None
        assert self._proc is not None
        if self._pid is None:
            if self.os_user is None:
                self._pid = self._proc.pid
            else:  # runuser forks: the server is its only child (exec'd, so the pid is final)
                children = _child_pids(self._proc.pid)
                if not children:
                    return None
                self._pid = children[0]
        return self._pid

    def _shutdown(self, mode: str) -> None:
        pid = self._server_pid()
        sig = self._stop_signal(mode)
        if pid is not None and _pid_alive(pid):
            children = _child_pids(pid) if sig == signal.SIGKILL else []
            os.kill(pid, sig)
            _wait_gone([pid, *children], timeout=STOP_TIMEOUT)
        self._reap()

    def _after_kill(self, pid: int) -> None:
        self._reap()

    def _reap(self) -> None:
        if self._proc is not None:
            self._proc.wait(timeout=STOP_TIMEOUT)  # runuser exits once its child is gone
            self._proc = None
        self._pid = None

    def _check_alive(self, what: str) -> None:
        """Raise with the log tail if the server process has already exited."""
        if not self._proc_alive():
            code = self._proc.returncode if self._proc is not None else None
            raise RuntimeError(f"{what} exited during startup (exit {code})\n{self._log_tail()}")
