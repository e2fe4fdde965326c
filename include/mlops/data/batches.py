"""Reading landed transaction batches: one entry point with errors a user can act on.

A batch is a `.parquet` or `.csv` file named `transactions_<YYYY-MM-DD>.<ext>` in the landing
directory. Reading never changes values: the expectation suite judges what is inside.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING

from include.mlops.data.schema import TIME_COLUMN
from include.mlops.errors import BatchReadError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "BATCH_NAME_PATTERN",
    "EmptyBatchError",
    "MissingBatchError",
    "UnreadableBatchError",
    "fingerprint",
    "latest_batch",
    "read_batch",
]

BATCH_NAME_PATTERN = re.compile(r"^transactions_(\d{4}-\d{2}-\d{2})\.(parquet|csv)$")
READABLE_SUFFIXES = (".parquet", ".csv")


class MissingBatchError(BatchReadError):
    """The batch file (or any batch in a landing directory) does not exist."""


class EmptyBatchError(BatchReadError):
    """The batch file has no bytes or no rows."""


class UnreadableBatchError(BatchReadError):
    """The file exists but is not a parquet/CSV table we can parse (corrupt, truncated, unknown kind)."""


def read_batch(path: str | Path) -> pd.DataFrame:
    """Read a .parquet or .csv batch into a DataFrame.

    CSV timestamps in `event_ts` are parsed as UTC when they parse; otherwise the column is left
    as text for the suite's type check to report. Raises a BatchReadError subclass naming the file.
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

    try:
        df = _read_parquet(p) if suffix == ".parquet" else _read_csv(p)
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


def _read_parquet(p: Path) -> pd.DataFrame:
    import pyarrow.parquet as pq

    table = pq.read_table(p)
    return table.to_pandas()


def _read_csv(p: Path) -> pd.DataFrame:
    import pandas as pd

    try:
        return pd.read_csv(p)
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
    """The newest batch in `landing_dir` by the date in its name (parquet wins a tie with csv)."""
    d = Path(landing_dir)
    if not d.is_dir():
        raise MissingBatchError(f"landing directory {d} does not exist")
    found: list[tuple[str, int, Path]] = []
    for p in d.iterdir():
        m = BATCH_NAME_PATTERN.match(p.name)
        if m and p.is_file():
            found.append((m.group(1), 1 if m.group(2) == "parquet" else 0, p))
    if not found:
        raise MissingBatchError(f"no batch in {d}: expected files named transactions_YYYY-MM-DD.parquet or .csv")
    return max(found)[2]


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
