"""Ingest speed: `ingest_file` vs a bare DuckDB `CREATE TABLE ... AS SELECT * FROM read_parquet(...)`.

Both run on the same generated Parquet file in one process, alternating, best of `--repeats`.
Target (issue 2): ingest at least half as fast as the bare copy (speed_ratio >= 0.5).

    python benchmarks/ingest.py --rows 10000000 --json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import duckdb

from mval.ingest import ingest_file
from mval.store import init_store, load_sql, open_store


def bare_copy(parquet: Path, db: Path) -> float:
    db.unlink(missing_ok=True)
    con = duckdb.connect(str(db))
    start = time.perf_counter()
    con.execute("CREATE TABLE copy AS SELECT * FROM read_parquet(?)", [str(parquet)])
    seconds = time.perf_counter() - start
    con.close()
    return seconds


def mval_ingest(parquet: Path, db: Path) -> float:
    db.unlink(missing_ok=True)
    init_store(db)
    with open_store(db) as con:
        start = time.perf_counter()
        ingest_file(con, parquet, "bench")
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        parquet = folder / "log.parquet"
        duckdb.connect().execute(load_sql("bench_ingest_log"), {"rows": args.rows, "path": str(parquet)})
        bare, ours = [], []
        for _ in range(args.repeats):
            bare.append(bare_copy(parquet, folder / "bare.duckdb"))
            ours.append(mval_ingest(parquet, folder / "store.duckdb"))
        result = {
            "rows": args.rows,
            "file_mb": round(parquet.stat().st_size / 2**20, 1),
            "bare_ctas_seconds": round(min(bare), 3),
            "ingest_seconds": round(min(ours), 3),
            "speed_ratio": round(min(bare) / min(ours), 3),
            "target_speed_ratio": 0.5,
        }
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
