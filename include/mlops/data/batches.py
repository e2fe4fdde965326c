"""Reading landed transaction batches: one entry point with errors a user can act on.

A batch is a `.parquet` or `.csv` file named `transactions_<YYYY-MM-DD>[_<n>].<ext>` in the landing
directory. Reading never changes values: the expectation suite judges what is inside.
Landing never overwrites a batch (a second one of the same day gets `_2`, `_3`, ...), and a
validated batch is read again only by its fingerprint: what was validated is what trains.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from include.mlops.data.schema import TIME_COLUMN
from include.mlops.errors import BatchReadError, MlopsError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "BATCH_NAME_PATTERN",
    "BatchChangedError",
    "EmptyBatchError",
    "InvalidBatchDate",
    "MissingBatchError",
    "UnreadableBatchError",
    "check_fingerprint",
    "fingerprint",
    "land_frame",
    "latest_batch",
    "read_batch",
]

# transactions_<date>.<ext> is a day's first batch; transactions_<date>_<n>.<ext> (n >= 2) its n-th
BATCH_NAME_PATTERN = re.compile(r"^transactions_(\d{4}-\d{2}-\d{2})(?:_(\d+))?\.(parquet|csv)$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
READABLE_SUFFIXES = (".parquet", ".csv")


class MissingBatchError(BatchReadError):
    """The batch file (or any batch in a landing directory) does not exist."""


class EmptyBatchError(BatchReadError):
    """The batch file has no bytes or no rows."""


class UnreadableBatchError(BatchReadError):
    """The file exists but is not a parquet/CSV table we can parse (corrupt, truncated, unknown kind)."""


class BatchChangedError(BatchReadError):
    """The batch file's bytes are no longer those that were validated (rewritten after validation)."""


class InvalidBatchDate(MlopsError, ValueError):
    """A batch date that is not YYYY-MM-DD: its file would not be found by date."""


def read_batch(path: str | Path, expected_fingerprint: str | None = None) -> pd.DataFrame:
    """Read a .parquet or .csv batch into a DataFrame.

    CSV timestamps in `event_ts` are parsed as UTC when they parse; otherwise the column is left
    as text for the suite's type check to report. Raises a BatchReadError subclass naming the file.
    With `expected_fingerprint` (the sha256 validation recorded) the bytes are read once, hashed
    and parsed from memory, so the frame is exactly the validated file or BatchChangedError.
    """
    import pandas as pd

    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in READABLE_SUFFIXES:
        raise UnreadableBatchError(
            f"batch {p}: unknown file kind {p.suffix or '(no extension)'!r}; "
            f"expected one of {', '.join(READABLE_SUFFIXES)}"
        )
    if not p.is_file():
        raise MissingBatchError(f"batch {p} does not exist (or is not a regular file)")
    if p.stat().st_size == 0:
        raise EmptyBatchError(f"batch {p} is empty (0 bytes): the producer wrote nothing")

    source: Path | io.BytesIO = p
    if expected_fingerprint is not None:
        data = p.read_bytes()
        _refuse_changed(p, expected_fingerprint, hashlib.sha256(data).hexdigest())
        source = io.BytesIO(data)
    try:
        df = _read_parquet(source) if suffix == ".parquet" else _read_csv(p, source)
    except BatchReadError:
        raise
    except Exception as exc:  # pyarrow/pandas raise many untyped errors for the same user problem
        kind = "parquet" if suffix == ".parquet" else "CSV"
        raise UnreadableBatchError(
            f"batch {p} is not a readable {kind} file ({type(exc).__name__}: {_first_line(exc)}); "
            "was it truncated or written with another format?"
        ) from exc
    if len(df) == 0:
        raise EmptyBatchError(f"batch {p} has a header ({len(df.columns)} columns) but 0 rows")
    if suffix == ".csv" and TIME_COLUMN in df.columns and df[TIME_COLUMN].dtype == "str":
        try:
            df[TIME_COLUMN] = pd.to_datetime(df[TIME_COLUMN], utc=True, format="ISO8601")
        except (ValueError, TypeError):
            pass  # left as text: the suite's type check names the column and its dtype
    return df


def _read_parquet(source: Path | io.BytesIO) -> pd.DataFrame:
    import pyarrow.parquet as pq

    table = pq.read_table(source)
    return table.to_pandas()


def _read_csv(p: Path, source: Path | io.BytesIO) -> pd.DataFrame:
    import pandas as pd

    try:
        return pd.read_csv(source)
    except pd.errors.EmptyDataError as exc:
        raise EmptyBatchError(f"batch {p} has no header and no rows (only whitespace)") from exc
    except UnicodeDecodeError as exc:
        raise UnreadableBatchError(
            f"batch {p} is not a UTF-8 text CSV (byte {exc.start} is {exc.object[exc.start : exc.start + 1]!r}); "
            "is it a binary file with a .csv name?"
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else "no message"


def latest_batch(landing_dir: str | Path) -> Path:
    """The newest batch in `landing_dir` by the date in its name, then its number that day
    (parquet wins a tie with csv)."""
    d = Path(landing_dir)
    if not d.is_dir():
        raise MissingBatchError(f"landing directory {d} does not exist")
    found: list[tuple[str, int, int, Path]] = []
    for p in d.iterdir():
        m = BATCH_NAME_PATTERN.match(p.name)
        if m and p.is_file():
            found.append((m.group(1), int(m.group(2) or 1), 1 if m.group(3) == "parquet" else 0, p))
    if not found:
        raise MissingBatchError(f"no batch in {d}: expected files named transactions_YYYY-MM-DD.parquet or .csv")
    return max(found)[3]


def fingerprint(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """sha256 of the file's bytes (hex), read in chunks so large batches stay out of memory."""
    p = Path(path)
    h = hashlib.sha256()
    try:
        with p.open("rb") as f:
            while chunk := f.read(chunk_bytes):
                h.update(chunk)
    except FileNotFoundError as exc:
        raise MissingBatchError(f"batch {p} does not exist: cannot fingerprint it") from exc
    return h.hexdigest()


def check_fingerprint(path: str | Path, expected: str) -> None:
    """Raise BatchChangedError unless the file at `path` still has the fingerprint validation pinned."""
    p = Path(path)
    _refuse_changed(p, expected, fingerprint(p))


def _refuse_changed(p: Path, expected: str, actual: str) -> None:
    if not expected:
        raise BatchChangedError(f"batch {p}: no validated fingerprint to check it against (validation recorded none)")
    if actual != expected:
        raise BatchChangedError(
            f"batch {p} changed after validation: validated fingerprint {expected}, now {actual}; "
            "a batch is never rewritten in place: land the new data as a new batch and run again"
        )


def land_frame(df: pd.DataFrame, landing_dir: str | Path, batch_date: str) -> Path:
    """Write `df` as a new parquet batch of `batch_date` and return its path; never overwrite one.

    The file is written under a hidden temporary name, then hard-linked to the first free name
    (`transactions_<date>.parquet`, then `_2`, `_3`, ...): the link fails when the name exists,
    so two writers never take the same name and no reader sees a half-written file.
    """
    if not _DATE.match(batch_date):
        raise InvalidBatchDate(f"batch_date={batch_date!r}: must be a date written YYYY-MM-DD")
    d = Path(landing_dir)
    d.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".transactions_{batch_date}.", suffix=".tmp", dir=d)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        df.to_parquet(tmp, index=False)
        n = 1
        while True:
            target = d / (f"transactions_{batch_date}.parquet" if n == 1 else f"transactions_{batch_date}_{n}.parquet")
            try:
                os.link(tmp, target)
            except FileExistsError:
                n += 1
                continue
            return target
    finally:
        tmp.unlink(missing_ok=True)
