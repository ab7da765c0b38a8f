"""Images listed in a CSV or Parquet manifest with a ``path`` column and an optional ``label`` column.

Why manifests: real data sets rarely sit in an ImageFolder tree (labels live in a spreadsheet, images
in a shared store), and a manifest is also how a subset of a large folder is chosen without copying.

- ``path``: relative paths resolve against the manifest's own folder, so a manifest and its images can
  be moved together; absolute paths are used as they are. The path as written (with forward slashes)
  is the image id, so it must be unique.
- ``label`` (optional): a class name (string) or a class index (integer). In a CSV every cell is text:
  a column whose cells are all integers is read as indices, anything else as names.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath
from typing import Optional, Sequence

import numpy as np

from ..errors import UserError
from .base import FileSource, verify_files, warn_skipped

_INT_RE = re.compile(r"^[+-]?\d+$")
_CSV_SUFFIXES = (".csv", ".csv.gz")
_PARQUET_SUFFIXES = (".parquet", ".pq")


def _read_table(path: Path):
    import pandas as pd

    name = path.name.lower()
    try:
        if name.endswith(_CSV_SUFFIXES):
            return pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
        if name.endswith(_PARQUET_SUFFIXES):
            return pd.read_parquet(path)
    except UserError:
        raise
    except Exception as exc:  # pandas/pyarrow raise many types for a malformed file
        raise UserError(f"manifest {path} cannot be read: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    raise UserError(f"manifest {path} must be a .csv or .parquet file")


def _rows(bad: Sequence[int], limit: int = 5) -> str:
    # +2: a header line and 1-based numbering, so the numbers match a spreadsheet / text editor.
    shown = ", ".join(str(r + 2) for r in bad[:limit])
    return shown + (f" and {len(bad) - limit} more" if len(bad) > limit else "")


def _parse_labels(path: Path, column, classes: Optional[list[str]]) -> tuple[np.ndarray, list[str], bool]:
    """Labels as int64 indices, the class names, and whether the names were derived from strings."""
    import pandas as pd

    values = column.tolist()
    missing = [k for k, v in enumerate(values) if v is None or (isinstance(v, float) and np.isnan(v))
               or (isinstance(v, str) and not v.strip())]
    if missing:
        raise UserError(f"manifest {path}: column 'label' is empty in row(s) {_rows(missing)}")
    if pd.api.types.is_bool_dtype(column):
        raise UserError(f"manifest {path}: column 'label' must hold class names or integer indices, not booleans")
    if pd.api.types.is_integer_dtype(column):
        ints: Optional[list[int]] = [int(v) for v in values]
    elif pd.api.types.is_float_dtype(column):
        if not all(float(v).is_integer() for v in values):
            raise UserError(f"manifest {path}: column 'label' holds fractional numbers; use class names or integer indices")
        ints = [int(v) for v in values]
    else:
        text = [str(v).strip() for v in values]
        ints = [int(t) for t in text] if all(_INT_RE.match(t) for t in text) else None
        if ints is None:
            names = sorted(set(text)) if classes is None else list(classes)
            index = {n: k for k, n in enumerate(names)}
            unknown = sorted({t for t in text if t not in index})
            if unknown:
                raise UserError(f"manifest {path}: column 'label' has class(es) {', '.join(map(repr, unknown[:5]))} "
                                f"not among the known classes {names[:10]}{'...' if len(names) > 10 else ''}")
            return np.asarray([index[t] for t in text], dtype=np.int64), names, classes is None
    arr = np.asarray(ints, dtype=np.int64)
    if arr.size and arr.min() < 0:
        raise UserError(f"manifest {path}: column 'label' has negative class index {int(arr.min())}")
    if classes is None:
        names = [str(k) for k in range(int(arr.max()) + 1 if arr.size else 0)]
    else:
        names = list(classes)
        if arr.size and arr.max() >= len(names):
            raise UserError(f"manifest {path}: column 'label' has class index {int(arr.max())} "
                            f"but there are only {len(names)} classes")
    return arr, names, False


# public names for the paired manifest reader (noisystudent.data.paired_readers)
read_table = _read_table
parse_labels = _parse_labels


class ManifestSource(FileSource):
    """Images listed in ``path`` (.csv or .parquet); labeled if the manifest has a ``label`` column.

    ``classes``: the class names labels refer to. Given, string labels are looked up by name and
    integer labels must index into it (how a test manifest is read against the training classes);
    omitted, names are the sorted distinct strings, or ``"0".."max"`` for integer labels.
    With ``verify=True`` unreadable or missing files are left out, listed in ``skipped`` and warned
    about once. Missing or malformed columns raise :class:`UserError` naming the file and column.
    """

    def __init__(self, path: str | os.PathLike, in_chans: int = 3, classes: Optional[Sequence[str]] = None,
                 verify: bool = True) -> None:
        # absolute: relative image paths resolve against it, in Ray workers too (another working directory)
        manifest = Path(os.path.abspath(Path(path).expanduser()))
        if not manifest.is_file():
            raise UserError(f"manifest not found: {manifest}")
        table = _read_table(manifest)
        columns = [str(c) for c in table.columns]
        if "path" not in columns:
            raise UserError(f"manifest {manifest} has no column 'path' (columns: {', '.join(columns) or 'none'})")
        if len(table) == 0:
            raise UserError(f"manifest {manifest} lists no images")
        raw = table["path"].tolist()
        bad = [k for k, v in enumerate(raw) if not isinstance(v, str) or not v.strip()]
        if bad:
            raise UserError(f"manifest {manifest}: column 'path' must hold non-empty file paths; "
                            f"bad row(s) {_rows(bad)}")
        base = manifest.parent
        ids = [str(PurePosixPath(v.strip().replace("\\", "/"))) for v in raw]
        seen: dict[str, int] = {}
        dups = []
        for k, iid in enumerate(ids):
            if iid in seen:
                dups.append(k)
            seen.setdefault(iid, k)
        if dups:
            raise UserError(f"manifest {manifest}: column 'path' lists {len(dups)} duplicate path(s), "
                            f"e.g. {ids[dups[0]]!r} in row {dups[0] + 2}; image ids must be unique")
        paths = [str(p if (p := Path(iid)).is_absolute() else base / p) for iid in ids]

        labels = None
        names = list(classes) if classes is not None else None
        derived = False
        if "label" in columns:
            labels, names, derived = _parse_labels(manifest, table["label"], names)

        skipped: list[tuple[str, str]] = []
        if verify:
            reasons = verify_files(ids, paths)
            keep = [k for k, r in enumerate(reasons) if r is None]
            skipped = [(ids[k], r) for k, r in enumerate(reasons) if r is not None]
            if not keep:
                raise UserError(f"manifest {manifest}: none of its {len(ids)} images can be read "
                                f"(first: {skipped[0][0]}: {skipped[0][1]})")
            ids = [ids[k] for k in keep]
            paths = [paths[k] for k in keep]
            if labels is not None:
                labels = labels[keep]
        if labels is not None and derived:
            counts = np.bincount(labels, minlength=len(names))
            empty = [names[k] for k in np.flatnonzero(counts == 0)]
            if empty:
                raise UserError(f"manifest {manifest}: class {empty[0]!r} has no readable image")

        super().__init__(base, ids, paths, in_chans, names if labels is not None else None)
        self.manifest = str(manifest)
        self.labels = labels
        self.skipped = skipped
        warn_skipped(str(manifest), skipped)

    def _where(self) -> str:
        return self.manifest
