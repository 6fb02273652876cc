"""The artifact store re-verifies images before use; a process re-hashes an image only when its
tree's metadata changed, and every kind of change is still caught: at once through inotify, or
by the stat fingerprint where inotify is not available or cannot see the change."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

import foretell._inotify
import foretell.store
from foretell.store import ArtifactCorrupt, ArtifactStore


def _image(store: ArtifactStore, tmp_path: Path) -> str:
    built = tmp_path / "built"
    (built / "pkg").mkdir(parents=True)
    (built / "model.py").write_text("def predict(ctx):\n    return []\n")
    (built / "pkg" / "data.bin").write_bytes(b"\x00" * 4096)
    return store.put_image(built)


def _writable(path: Path) -> None:
    path.chmod(0o755 if path.is_dir() else 0o644)


def _rewrite_same_size_and_mtime(path: Path) -> None:
    st = path.stat()
    _writable(path.parent)
    _writable(path)
    path.write_bytes(b"\x01" * st.st_size)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _make_executable(path: Path) -> None:
    path.chmod(0o555)


def _add_file(path: Path) -> None:
    _writable(path.parent)
    (path.parent / "extra.py").write_text("import os\n")


def _swap_for_a_copy_with_other_bytes(path: Path) -> None:
    st = path.stat()
    _writable(path.parent)
    twin = path.with_name("twin")
    twin.write_bytes(b"\x02" * st.st_size)
    os.utime(twin, ns=(st.st_atime_ns, st.st_mtime_ns))
    twin.chmod(st.st_mode)
    os.replace(twin, path)


@pytest.fixture(params=["inotify", "fingerprint only"])
def watching(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways a process checks an image again: with inotify watches, and without (inotify
    refused: every check fingerprints the tree)."""
    if request.param == "fingerprint only":
        monkeypatch.setattr(foretell._inotify.Watcher, "watch", lambda _self, _root: False)
    return str(request.param)


@pytest.mark.parametrize(
    ("target", "tamper"),
    [
        ("pkg/data.bin", _rewrite_same_size_and_mtime),
        ("model.py", _make_executable),
        ("pkg/data.bin", _add_file),
        ("pkg/data.bin", _swap_for_a_copy_with_other_bytes),
    ],
)
def test_a_change_after_a_verification_is_caught(
    tmp_path: Path, target: str, tamper: Callable[[Path], None], watching: str
) -> None:
    store = ArtifactStore(tmp_path / "store")
    digest = _image(store, tmp_path)
    image = store.verified_image(digest)
    assert store.verified_image(digest) == image
    tamper(image / target)
    with pytest.raises(ArtifactCorrupt):
        store.verified_image(digest)
    # And it stays refused: a failed check is not remembered as a good one.
    with pytest.raises(ArtifactCorrupt):
        store.verified_image(digest)


def _counting_hashes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    hashed: list[Path] = []
    original = foretell.store.sha256_file

    def counting(path: Path) -> str:
        hashed.append(path)
        return original(path)

    monkeypatch.setattr(foretell.store, "sha256_file", counting)
    return hashed


def test_an_unchanged_image_is_hashed_once_per_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ArtifactStore(tmp_path / "store")
    digest = _image(store, tmp_path)
    hashed = _counting_hashes(monkeypatch)
    store.verified_image(digest)
    assert len(hashed) == 2
    # Another store object over the same directory (resources build one per use): no re-hash.
    ArtifactStore(tmp_path / "store").verified_image(digest)
    assert len(hashed) == 2


def test_a_part_s_digest_comes_from_the_image_s_own_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The digest of a top-level directory (site-packages: the layer warm templates share) is
    the one tree_digest gives, taken from the hash that verified the image, not a second read."""
    store = ArtifactStore(tmp_path / "store")
    digest = _image(store, tmp_path)
    image = store.verified_image(digest)
    hashed = _counting_hashes(monkeypatch)
    part = store.verified_part(digest, "pkg")
    assert hashed == []
    assert part == foretell.store.tree_digest(image / "pkg")
    assert part not in (digest, foretell.store.tree_digest(tmp_path / "empty"))


def _counting_fingerprints(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    taken: list[Path] = []
    original = foretell.store.tree_fingerprint

    def counting(root: Path) -> str:
        taken.append(root)
        return original(root)

    monkeypatch.setattr(foretell.store, "tree_fingerprint", counting)
    return taken


def test_a_watched_image_is_fingerprinted_again_only_after_a_while(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ArtifactStore(tmp_path / "store")
    digest = _image(store, tmp_path)
    taken = _counting_fingerprints(monkeypatch)
    for _ in range(20):
        store.verified_image(digest)
    assert len(taken) == 1
    monkeypatch.setattr(foretell.store, "REFINGERPRINT_S", 0.0)
    store.verified_image(digest)
    assert len(taken) == 2


def test_an_unwatched_image_is_fingerprinted_at_every_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(foretell._inotify.Watcher, "watch", lambda _self, _root: False)
    store = ArtifactStore(tmp_path / "store")
    digest = _image(store, tmp_path)
    taken = _counting_fingerprints(monkeypatch)
    for _ in range(3):
        store.verified_image(digest)
    assert len(taken) == 3


def test_a_write_inotify_cannot_see_is_caught_by_the_next_fingerprint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write through a hard link made outside the image reaches no watched directory (root
    only: the file is read-only); the fingerprint, taken again after REFINGERPRINT_S, sees it."""
    store = ArtifactStore(tmp_path / "store")
    digest = _image(store, tmp_path)
    image = store.verified_image(digest)
    outside = tmp_path / "outside"
    outside.mkdir()
    os.link(image / "pkg" / "data.bin", outside / "data.bin")
    with open(outside / "data.bin", "r+b") as f:
        f.write(b"\x03")
    monkeypatch.setattr(foretell.store, "REFINGERPRINT_S", 0.0)
    with pytest.raises(ArtifactCorrupt):
        store.verified_image(digest)


def test_an_image_directory_replaced_under_a_renamed_parent_is_caught(tmp_path: Path) -> None:
    """Renaming a parent of the image queues no event on the image's own watches: the check
    sees another directory at the image's path."""
    store = ArtifactStore(tmp_path / "store")
    digest = _image(store, tmp_path)
    image = store.verified_image(digest)
    images = image.parent
    images.rename(images.with_name("images.old"))
    shutil.copytree(images.with_name("images.old") / image.name, image)
    (image / "pkg" / "data.bin").write_bytes(b"\x04" * 4096)
    with pytest.raises(ArtifactCorrupt):
        store.verified_image(digest)
