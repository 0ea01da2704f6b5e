"""Files only their owner may read: the data folder of ``genqueue up`` holds every prompt.

Folders are 0700 and files 0600. Children started with :data:`PRIVATE_UMASK` create theirs that
way; :func:`make_private_tree` closes up what an older genqueue left world-readable.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

#: The umask of the processes that write the data folder: nothing for group or others.
PRIVATE_UMASK = 0o077
DIR_MODE = 0o700
FILE_MODE = 0o600


def make_private_dir(path: Path) -> Path:
    """``path`` as a folder of its owner's alone (made with its parents if missing)."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    path.chmod(DIR_MODE)
    return path


def make_private_tree(path: Path) -> Path:
    """``path`` and everything in it: folders 0700, files 0600 (symlinks left alone)."""
    make_private_dir(path)
    for root, dirs, files in os.walk(path):
        for name in dirs:
            os.chmod(os.path.join(root, name), DIR_MODE, follow_symlinks=False)
        for name in files:
            file = os.path.join(root, name)
            if not os.path.islink(file):
                os.chmod(file, FILE_MODE)
    return path


def write_private_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable by its owner only, from its first byte on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "w") as file:
        os.fchmod(file.fileno(), FILE_MODE)
        file.write(text)


def read_or_create_secret(path: Path) -> str:
    """The secret kept in ``path``; a new random one, saved there (0600), if there is none."""
    if path.exists():
        path.chmod(FILE_MODE)
        secret = path.read_text().strip()
        if secret:
            return secret
    secret = secrets.token_urlsafe(32)
    write_private_file(path, secret + "\n")
    return secret
