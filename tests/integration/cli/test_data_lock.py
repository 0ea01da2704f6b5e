"""One ``genqueue up`` per data folder: a second is refused at once, a dead one's lock is not."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from genqueue.cli.data_lock import DataFolderInUse, lock_data_folder, unlock_data_folder

pytestmark = pytest.mark.timeout(30)

HOLD = (
    "import sys, time; from pathlib import Path; "
    "from genqueue.cli.data_lock import lock_data_folder; "
    "lock_data_folder(Path(sys.argv[1])); print('held', flush=True); time.sleep(60)"
)


def _holder(data_dir: Path) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(data_dir)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline() == "held\n"
    return process


def test_a_second_holder_is_refused_at_once_naming_the_setting(tmp_path: Path) -> None:
    holder = _holder(tmp_path)
    try:
        start = time.monotonic()
        with pytest.raises(DataFolderInUse) as refused:
            lock_data_folder(tmp_path)
        assert time.monotonic() - start < 1
        assert str(refused.value) == (
            f"the data folder {tmp_path} is in use by another genqueue up (pid {holder.pid}); "
            "stop that one, or give this one a folder of its own with GENQUEUE_DATA_DIR=<folder>"
        )
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_of_a_killed_up_does_not_block(tmp_path: Path) -> None:
    holder = _holder(tmp_path)
    holder.kill()  # SIGKILL: no cleanup ran, the lock file is still there
    holder.wait()
    assert (tmp_path / "up.lock").read_text().strip() == str(holder.pid)
    fd = lock_data_folder(tmp_path)
    try:
        assert (tmp_path / "up.lock").read_text().strip() == str(os.getpid())
        assert oct((tmp_path / "up.lock").stat().st_mode & 0o777) == "0o600"
    finally:
        unlock_data_folder(fd)
    unlock_data_folder(lock_data_folder(tmp_path))  # released: taken again
