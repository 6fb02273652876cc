"""The process's inotify watches on the store's image trees (see foretell.store: a check of a
watched image whose directories queued no event since it was verified is one read of the
queue). Linux only, through libc: where inotify is missing or refuses a watch, `watch` says so
and the store fingerprints instead."""

from __future__ import annotations

import ctypes
import os
import struct
import threading
from pathlib import Path

# inotify watches (one per directory) this process holds at most over all images: the kernel's
# limit (fs.inotify.max_user_watches) is shared by every process of the user.
WATCH_BUDGET = 16_384

# inotify(7): what a change to a directory's entries or to the directory itself queues.
_IN_MODIFY, _IN_ATTRIB, _IN_CLOSE_WRITE = 0x2, 0x4, 0x8
_IN_MOVED_FROM, _IN_MOVED_TO, _IN_CREATE, _IN_DELETE = 0x40, 0x80, 0x100, 0x200
_IN_DELETE_SELF, _IN_MOVE_SELF, _IN_Q_OVERFLOW = 0x400, 0x800, 0x4000
_IN_ONLYDIR, _IN_DONT_FOLLOW = 0x01000000, 0x02000000
_CHANGES = (
    _IN_MODIFY | _IN_ATTRIB | _IN_CLOSE_WRITE | _IN_MOVED_FROM | _IN_MOVED_TO | _IN_CREATE
    | _IN_DELETE | _IN_DELETE_SELF | _IN_MOVE_SELF
)  # fmt: skip
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, length of the name that follows


class Watcher:
    """The process's inotify instance: watches on every directory of the images it verified.
    An event on any of them (IN_IGNORED too: a directory removed) marks its image changed."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self._fd: int = fd
        self._image_of: dict[int, Path] = {}
        # Least recently verified first.
        self._watches: dict[Path, list[int]] = {}
        self.changed: set[Path] = set()

    def watch(self, root: Path) -> bool:
        """Watches every directory of `root`, each before it is listed (so one created meanwhile
        shows as an event); False, and nothing of `root` watched, when the budget or the kernel
        refuses."""
        self.unwatch(root)
        watches: list[int] = []
        self._watches[root] = watches
        stack = [os.fsencode(root)]
        while stack:
            directory = stack.pop()
            while len(self._image_of) >= WATCH_BUDGET:
                oldest = next(iter(self._watches))
                if oldest == root:
                    self.unwatch(root)
                    return False
                self.unwatch(oldest)
            wd = self._libc.inotify_add_watch(
                self._fd, directory, _CHANGES | _IN_ONLYDIR | _IN_DONT_FOLLOW
            )
            if wd < 0:
                self.unwatch(root)
                return False
            watches.append(wd)
            self._image_of[wd] = root
            try:
                with os.scandir(directory) as scan:
                    stack += [e.path for e in scan if e.is_dir(follow_symlinks=False)]
            except OSError:
                self.unwatch(root)
                return False
        return True

    def unwatch(self, root: Path) -> None:
        for wd in self._watches.pop(root, []):
            del self._image_of[wd]
            self._libc.inotify_rm_watch(self._fd, wd)
        self.changed.discard(root)

    def unchanged(self, root: Path) -> bool:
        """Whether `root` is watched and no event came for it since it was watched."""
        self._drain()
        return root in self._watches and root not in self.changed

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self._fd, 64 * 1024)
            except BlockingIOError:
                return
            offset = 0
            while offset < len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                offset += _EVENT.size + length
                if mask & _IN_Q_OVERFLOW:
                    self.changed.update(self._watches)
                elif (root := self._image_of.get(wd)) is not None:
                    self.changed.add(root)


_lock = threading.Lock()
_watcher: Watcher | None = None
_unavailable = False


def watch(root: Path) -> bool:
    """Watches every directory of `root` in this process's instance (created on first use);
    False when inotify is not available or refuses, and nothing of `root` is then watched."""
    global _watcher, _unavailable
    with _lock:
        if _watcher is None and not _unavailable:
            try:
                _watcher = Watcher()
            except (OSError, AttributeError):  # no inotify here: every check fingerprints
                _unavailable = True
        return _watcher is not None and _watcher.watch(root)


def unwatch(root: Path) -> None:
    with _lock:
        if _watcher is not None:
            _watcher.unwatch(root)


def unchanged(root: Path) -> bool:
    """Whether `root` is watched and no event came for it since `watch`."""
    with _lock:
        return _watcher is not None and _watcher.unchanged(root)
