"""Files that are never half-written: write to a temporary name beside the target, then rename.

A rename within one folder is atomic on POSIX filesystems, so a stage killed at any moment
leaves either the previous file or the new one, never a truncated mix that a later stage (or a
resumed run) would read as valid::

    with atomic_path(out / "weights.pt") as tmp:
        torch.save(state, tmp)
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path in ``path``'s folder (same suffix, so writers that pick a format by
    extension still work); renamed onto ``path`` when the block ends without error, removed
    otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{''.join(path.suffixes)}")
    os.close(handle)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, value) -> Path:
    return write_text(path, json.dumps(value, indent=2))
