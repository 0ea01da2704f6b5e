"""The processes the bench starts, and their CPU time and peak memory read from ``/proc``."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

#: How long a started process (simulator, worker, API) may take to answer.
START_TIMEOUT_S = 60.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1


def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` after the command name: fields 3 (state) onwards."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _children_by_parent() -> dict[int, list[int]]:
    """Every live process's children, by parent pid."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def children_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    return _children_by_parent().get(pid, [])


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants."""
    children = _children_by_parent()
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie has closed its sockets: it does not)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def tree_cpu_s(root: int) -> float:
    """User plus system CPU seconds of the live processes of ``root``'s tree."""
    ticks = 0
    for pid in process_tree(root):
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / CLK_TCK


def peak_rss_kb(pid: int) -> int | None:
    """The peak resident set (``VmHWM`` in ``/proc/<pid>/status``) of ``pid``, in kB."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


def tree_peak_rss_mb(root: int) -> float:
    """The sum of every process's peak resident set (VmHWM) in ``root``'s tree, in MB."""
    return sum(peak_rss_kb(pid) or 0 for pid in process_tree(root)) / 1024


def _death_signal() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when the bench dies (Linux)."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    sigterm = int(signal.SIGTERM)

    def set_death_signal() -> None:
        prctl(PR_SET_PDEATHSIG, sigterm)

    return set_death_signal


def base_env() -> dict[str, str]:
    """The bench's environment without any genqueue, RunPod, Redis or Celery setting."""
    prefixes = ("GENQUEUE_", "RUNPOD_", "REDIS_URL", "CELERY", "FLOWER_")
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


class Children:
    """The processes the bench started, each the leader of its own process group."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._procs: list[subprocess.Popen[bytes]] = []
        self._preexec = _death_signal()

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with self.log_path(name).open("ab") as log:
            proc = subprocess.Popen(
                argv,
                env=env,
                cwd=self.workdir,  # no .env file of the caller's is read
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                process_group=0,
                preexec_fn=self._preexec,
            )
        self._procs.append(proc)
        return proc

    def log_path(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def spawn_worker(
        self, env: dict[str, str], name: str = "worker", timeout_s: float = 30
    ) -> None:
        """``genqueue worker`` with ``env``, returned once its log says it is ready."""
        self.spawn(name, [sys.executable, "-m", "genqueue", "worker"], env)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if " ready." in self.log_path(name).read_text(errors="replace"):
                return
            time.sleep(0.05)
        raise RuntimeError(f"the {name} did not start:\n{self.log_tail(name)}")

    def log_tail(self, name: str, lines: int = 30) -> str:
        try:
            text = self.log_path(name).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL ``proc``'s process group (its children included); wait until all are gone."""
        tree = process_tree(proc.pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in tree) and time.monotonic() < deadline:
            time.sleep(0.02)
        if proc in self._procs:
            self._procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self._procs)):
            self.stop(proc)
