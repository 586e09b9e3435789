"""A Hugging Face Hub cache built by hand, as ``huggingface_hub`` lays it out and reads it offline:
``CACHE/models--ORG--NAME/{refs/REF, snapshots/COMMIT/FILE -> ../../blobs/SHA256, blobs/SHA256}``."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path


def add_snapshot(cache: Path, repo: str, files: Path, commit: str, refs: tuple[str, ...] = ("main",)) -> Path:
    """Put the files of the directory ``files`` into ``cache`` as ``repo`` at ``commit``, with the
    branch or tag names ``refs`` pointing at it; the snapshot directory."""
    assert len(commit) == 40, "a commit hash has 40 hex digits"
    root = cache / ("models--" + repo.replace("/", "--"))
    snapshot = root / "snapshots" / commit
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for path in sorted(p for p in files.iterdir() if p.is_file()):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        blob = root / "blobs" / digest
        if not blob.exists():
            shutil.copyfile(path, blob)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / path.name)
    for ref in refs:
        (root / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (root / "refs" / ref).write_text(commit)  # huggingface_hub writes the hash without a newline
    return snapshot
