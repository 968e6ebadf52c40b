"""The gallery: every job and finished image in SQLite (WAL), with versioned migrations.

Rows go in and come out as the typed records of sdplay.server.records; no other module sees a row.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

from sdplay.errors import OutputNotWritable
from sdplay.server.jobs import JobStatus
from sdplay.server.records import ImageRecord, JobFailure, JobRecord, JobResult, failure_json, result_json

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted by restart"

# Each entry moves the schema from version N-1 to N; never edit one that has shipped, append a new one.
MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE jobs (
            id TEXT PRIMARY KEY, api TEXT NOT NULL, status TEXT NOT NULL, created_at REAL NOT NULL,
            started_at REAL, finished_at REAL, request_json TEXT NOT NULL, error_json TEXT,
            idempotency_key TEXT UNIQUE, body_hash TEXT, result_json TEXT)""",
        "CREATE INDEX jobs_status ON jobs(status)",
        """CREATE TABLE images (
            id INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, idx INTEGER NOT NULL,
            created_at REAL NOT NULL, prompt TEXT NOT NULL, negative_prompt TEXT NOT NULL, model TEXT NOT NULL,
            seed INTEGER NOT NULL, width INTEGER, height INTEGER, steps INTEGER, guidance REAL, sampler TEXT,
            request_json TEXT NOT NULL, timings_json TEXT, telemetry_json TEXT, file TEXT NOT NULL,
            UNIQUE(job_id, idx))""",
        "CREATE INDEX images_created ON images(created_at)",
        "CREATE INDEX images_model ON images(model)",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)

_JOB_COLUMNS = (
    "id, api, status, created_at, started_at, finished_at, request_json, error_json, result_json, idempotency_key, "
    "body_hash"
)
_IMAGE_COLUMNS = (
    "id, job_id, idx, created_at, prompt, negative_prompt, model, seed, width, height, steps, guidance, sampler, "
    "request_json, timings_json, telemetry_json, file"
)


class Gallery:
    """Thread-safe store of jobs and images; image files live under `output_dir`."""

    def __init__(self, path: Path, output_dir: Path):
        self.path = Path(path)
        self.output_dir = Path(output_dir)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise OutputNotWritable(
                f"Cannot open the gallery database {self.path}: {exc}.",
                field="gallery_db",
                hint="Pass --gallery-db with a writable path.",
            ) from exc
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self.migrate()

    def migrate(self) -> int:
        """Apply the migrations this database has not seen; returns the schema version."""
        with self._lock:
            self._db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = self._db.execute("SELECT MAX(version) FROM schema_version").fetchone()
            current = row[0] or 0
            if current > SCHEMA_VERSION:
                raise OutputNotWritable(
                    f"{self.path} has gallery schema {current}, newer than this sdplay ({SCHEMA_VERSION}).",
                    field="gallery_db",
                    hint="Upgrade sdplay, or use another --gallery-db.",
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    for statement in MIGRATIONS[version - 1]:
                        self._db.execute(statement)
                    self._db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                log.info("gallery %s migrated to schema %d", self.path, version)
            return SCHEMA_VERSION

    def _write(self, sql: str, params: tuple | dict = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, params)

    def _read(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- jobs ------------------------------------------------------------------------------
    def mark_interrupted(self) -> int:
        """Jobs left queued or running by a previous process become failed; returns how many."""
        error = JobFailure("Interrupted", f"The job was {INTERRUPTED}.", hint="Submit it again.")
        cur = self._write(
            "UPDATE jobs SET status='failed', error_json=?, finished_at=? WHERE status IN ('queued', 'running')",
            (failure_json(error), time.time()),
        )
        return cur.rowcount

    def add_job(self, job: JobRecord) -> None:
        self._write(f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES ({_placeholders(_JOB_COLUMNS)})", job.columns())

    def job_started(self, job_id: str, started_at: float) -> None:
        self._write("UPDATE jobs SET status=?, started_at=? WHERE id=?", (JobStatus.RUNNING.value, started_at, job_id))

    def job_finished(
        self,
        job_id: str,
        status: JobStatus,
        *,
        finished_at: float,
        started_at: float | None,
        error: JobFailure | None = None,
        result: JobResult | None = None,
    ) -> None:
        """Record a job's outcome: done with its result, failed with its error, or cancelled."""
        self._write(
            "UPDATE jobs SET status=?, finished_at=?, started_at=?, error_json=?, result_json=? WHERE id=?",
            (status.value, finished_at, started_at, failure_json(error), result_json(result), job_id),
        )

    def get_job(self, job_id: str) -> JobRecord | None:
        rows = self._read("SELECT * FROM jobs WHERE id=?", (job_id,))
        return JobRecord.from_row(rows[0]) if rows else None

    def job_for_key(self, key: str) -> JobRecord | None:
        rows = self._read("SELECT * FROM jobs WHERE idempotency_key=?", (key,))
        return JobRecord.from_row(rows[0]) if rows else None

    def list_jobs(self, status: str | None, limit: int) -> list[JobRecord]:
        where, params = ("WHERE status=?", (status,)) if status else ("", ())
        rows = self._read(f"SELECT * FROM jobs {where} ORDER BY created_at DESC LIMIT ?", (*params, limit))
        return [JobRecord.from_row(r) for r in rows]

    # -- images ----------------------------------------------------------------------------
    def add_image(self, image: ImageRecord) -> int:
        """Store an image's record; returns its gallery id."""
        columns = _IMAGE_COLUMNS.replace("id, ", "", 1)
        cur = self._write(f"INSERT INTO images ({columns}) VALUES ({_placeholders(columns)})", image.columns())
        return int(cur.lastrowid or 0)

    def get_image(self, image_id: int) -> ImageRecord | None:
        rows = self._read(f"SELECT {_IMAGE_COLUMNS} FROM images WHERE id=?", (image_id,))
        return ImageRecord.from_row(rows[0]) if rows else None

    def image_of_job(self, job_id: str, index: int) -> ImageRecord | None:
        rows = self._read(f"SELECT {_IMAGE_COLUMNS} FROM images WHERE job_id=? AND idx=?", (job_id, index))
        return ImageRecord.from_row(rows[0]) if rows else None

    def search(
        self,
        text: str | None = None,
        model: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[ImageRecord], int]:
        """Images whose prompt contains `text`, made by `model`, between `since` and `until`; newest first."""
        clauses, params = [], []
        if text:
            clauses.append("prompt LIKE ? ESCAPE '\\'")
            params.append("%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
        if model:
            clauses.append("model = ?")
            params.append(model)
        if since is not None:
            clauses.append("created_at >= ?")
            params.append(since)
        if until is not None:
            clauses.append("created_at < ?")
            params.append(until)
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        total = self._read(f"SELECT COUNT(*) FROM images {where}", tuple(params))[0][0]
        rows = self._read(
            f"SELECT {_IMAGE_COLUMNS} FROM images {where} ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
            (*params, limit, offset),
        )
        return [ImageRecord.from_row(r) for r in rows], int(total)

    def delete_image(self, image_id: int) -> bool:
        """Delete the image's record and its file; False if there was no such image."""
        image = self.get_image(image_id)
        if image is None:
            return False
        self._write("DELETE FROM images WHERE id=?", (image_id,))
        path = self.file_path(image)
        try:
            path.unlink(missing_ok=True)
            if path.parent != self.output_dir and not any(path.parent.iterdir()):
                path.parent.rmdir()
        except OSError as exc:
            log.warning("could not delete %s: %s", path, exc)
        return True

    def file_path(self, image: ImageRecord) -> Path:
        """The absolute path of an image's file; records only ever hold paths the server wrote."""
        root = self.output_dir.resolve()
        path = (root / image.file).resolve()
        if not path.is_relative_to(root):
            raise OutputNotWritable(f"Gallery image {image.id} points outside the output folder; refusing it.")
        return path


def _placeholders(columns: str) -> str:
    """`:name` placeholders for a comma-separated column list."""
    return ", ".join(f":{c.strip()}" for c in columns.split(","))
