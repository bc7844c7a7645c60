"""SQLAlchemy 2 schema of the application database (batches, assets, stage runs, metrics, search).

The schema changes only through Alembic migrations (``alembic/versions``); ``create_all`` is used
by nobody outside tests of the migrations themselves. Dialect-specific search structures (the
SQLite FTS5 table, the PostgreSQL full-text index, the pgvector column and its index) live only in
the migrations, are listed in :data:`UNMANAGED_NAMES`, and are filtered out of autogenerate so that
``alembic check`` stays empty on both dialects.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

EMBEDDING_DIM = 384
"""Length of a prompt embedding (all-MiniLM-L6-v2)."""

ASSET_KINDS = ("prompt", "image", "bundle", "mesh")
ASSET_STATES = ("pending", "running", "succeeded", "failed", "needs_review")
"""``needs_review``: finished, but its metrics missed the quality verdict
(:func:`models.evaluate.verdict.judge_quality`; migration 0009)."""
BATCH_STATUSES = ("running", "finished", "failed")
BATCH_ITEM_STATUSES = ("accepted", "rejected")
STAGE_RUN_STATUSES = ("running", "succeeded", "failed", "skipped", "abandoned")
"""``abandoned``: still ``running`` when its asset finished (its worker lost track of it)."""

# Objects created by migrations only (dialect specific); never part of the ORM metadata.
SQLITE_FTS_TABLE = "prompt_fts"
PG_FTS_COLUMN = "text_tsv"
"""Stored ``to_tsvector('english', text)`` of prompt_index (generated column, PostgreSQL)."""
PG_FTS_INDEX = "ix_prompt_index_text_tsv"
PG_VECTOR_COLUMN = "embedding_vec"
PG_VECTOR_INDEX = "ix_prompt_index_embedding_vec_hnsw"
PG_VERSION_TABLE = "prompt_index_version"
"""One row ``(id=1, version)``: a new version by trigger on every change of prompt_index
(PostgreSQL, migration 0010), so that a search sees a change by one primary-key read."""
UNMANAGED_NAMES = frozenset(
    {SQLITE_FTS_TABLE, PG_FTS_COLUMN, PG_FTS_INDEX, PG_VECTOR_COLUMN, PG_VECTOR_INDEX,
     PG_VERSION_TABLE}
)

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def new_id() -> str:
    """A fresh 32-character hex id (uuid4)."""
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC that always reads back timezone-aware.

    PostgreSQL keeps ``timestamptz``; SQLite has no time zones and returns naive values, which are
    UTC by construction here, so they are tagged UTC on read. Naive inputs are refused: a naive
    datetime has no defined instant.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware datetime (UTC)")
        value = value.astimezone(UTC)
        # SQLite stores the string form; without the offset, comparisons stay lexicographic-sane.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _in(column: str, values: tuple[str, ...]) -> str:
    quoted = ", ".join(f"'{v}'" for v in values)
    return f"{column} IN ({quoted})"


class Base(DeclarativeBase):
    """The one declarative base; constraint names follow :data:`NAMING_CONVENTION`."""

    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        datetime: UTCDateTime(),
        dict[str, Any]: sa.JSON(),
        list[str]: sa.JSON(),
    }


class Batch(Base):
    """One run of a manifest through the catalog flow."""

    __tablename__ = "batches"
    __table_args__ = (sa.CheckConstraint(_in("status", BATCH_STATUSES), name="status"),)

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True, default=new_id)
    manifest_path: Mapped[str] = mapped_column(sa.Text)
    manifest_sha256: Mapped[str | None] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    status: Mapped[str] = mapped_column(sa.String(16), default="running")
    summary: Mapped[dict[str, Any] | None]

    items: Mapped[list[BatchItem]] = relationship(back_populates="batch", order_by="BatchItem.line")


class Asset(Base):
    """One requested asset, identified by the hash of its canonical request."""

    __tablename__ = "assets"
    __table_args__ = (
        sa.CheckConstraint(_in("kind", ASSET_KINDS), name="kind"),
        sa.CheckConstraint(_in("state", ASSET_STATES), name="state"),
        sa.Index("ix_assets_state_updated_at", "state", "updated_at"),
    )

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(16))
    prompt: Mapped[str | None] = mapped_column(sa.Text)
    image_ref: Mapped[str | None] = mapped_column(sa.Text)
    image_sha256: Mapped[str | None] = mapped_column(sa.String(64))
    bundle_ref: Mapped[str | None] = mapped_column(sa.Text)
    mesh_ref: Mapped[str | None] = mapped_column(sa.Text)
    """Store key of a ``mesh`` request's input mesh (``inputs/<sha256>.<ext>``)."""
    mesh_sha256: Mapped[str | None] = mapped_column(sa.String(64))
    """Hex SHA-256 of the input mesh file (None for a remote mesh accepted by reference)."""
    seed: Mapped[int] = mapped_column(sa.BigInteger)
    variant: Mapped[int] = mapped_column(sa.Integer, default=0)
    generator: Mapped[str] = mapped_column(sa.String(64))
    init: Mapped[str] = mapped_column(sa.String(64))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    tags: Mapped[list[str]] = mapped_column(default=list)
    previous_seeds: Mapped[list[int]] = mapped_column(
        sa.JSON, default=list, server_default=sa.text("'[]'")
    )
    """Seeds that ``retry --reseed`` replaced, oldest first (never part of ``params``)."""
    state: Mapped[str] = mapped_column(sa.String(16), default="pending")
    current_stage: Mapped[str | None] = mapped_column(sa.String(32))
    lease_owner: Mapped[str | None] = mapped_column(sa.String(128))
    lease_expires_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    last_error_class: Mapped[str | None] = mapped_column(sa.String(128))
    last_error_message: Mapped[str | None] = mapped_column(sa.Text)
    output_keys: Mapped[dict[str, Any]] = mapped_column(default=dict)
    object_digests: Mapped[dict[str, Any] | None]
    """Object key -> ``{"size": bytes, "sha256": hex}`` recorded when a stage wrote it (migration
    0006); keys written before it have no entry and are verified by existence and size only."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    finished_at: Mapped[datetime | None]

    stage_runs: Mapped[list[StageRun]] = relationship(
        back_populates="asset", order_by="StageRun.id"
    )
    metrics: Mapped[list[Metric]] = relationship(back_populates="asset", order_by="Metric.name")


class BatchItem(Base):
    """One manifest row of a batch: accepted (pointing at its asset) or rejected with a reason."""

    __tablename__ = "batch_items"
    __table_args__ = (
        sa.CheckConstraint(_in("status", BATCH_ITEM_STATUSES), name="status"),
        sa.UniqueConstraint("batch_id", "line", "asset_id"),
    )

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    batch_id: Mapped[str] = mapped_column(
        sa.ForeignKey("batches.id", ondelete="CASCADE"), index=True
    )
    line: Mapped[int] = mapped_column(sa.Integer)
    item_id: Mapped[str | None] = mapped_column(sa.String(256))
    asset_id: Mapped[str | None] = mapped_column(sa.ForeignKey("assets.id"), index=True)
    status: Mapped[str] = mapped_column(sa.String(16))
    reason: Mapped[str | None] = mapped_column(sa.Text)
    raw: Mapped[str | None] = mapped_column(sa.Text)
    reference: Mapped[str | None] = mapped_column(sa.Text)
    """The row's image or bundle reference as the manifest gave it (resolved path or URL); the
    asset itself only keeps the content-addressed store key (migration 0006)."""

    batch: Mapped[Batch] = relationship(back_populates="items")


class StageRun(Base):
    """One attempt of one pipeline stage on one asset."""

    __tablename__ = "stage_runs"
    __table_args__ = (
        sa.CheckConstraint(_in("status", STAGE_RUN_STATUSES), name="status"),
        sa.UniqueConstraint("asset_id", "stage", "attempt"),
    )

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    asset_id: Mapped[str] = mapped_column(
        sa.ForeignKey("assets.id", ondelete="CASCADE"), index=True
    )
    stage: Mapped[str] = mapped_column(sa.String(32))
    attempt: Mapped[int] = mapped_column(sa.Integer)
    status: Mapped[str] = mapped_column(sa.String(16), default="running")
    params_hash: Mapped[str | None] = mapped_column(sa.String(64))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    duration_s: Mapped[float | None] = mapped_column(sa.Double)
    host: Mapped[str | None] = mapped_column(sa.String(256))
    device: Mapped[str | None] = mapped_column(sa.String(64))
    peak_memory_mb: Mapped[float | None] = mapped_column(sa.Double)
    error_class: Mapped[str | None] = mapped_column(sa.String(128))
    error_message: Mapped[str | None] = mapped_column(sa.Text)
    flow_run_id: Mapped[str | None] = mapped_column(sa.String(64))
    output_keys: Mapped[dict[str, Any]] = mapped_column(default=dict)

    asset: Mapped[Asset] = relationship(back_populates="stage_runs")


class Metric(Base):
    """One named scalar measured on an asset (units are part of the name, e.g. ``duration_s``)."""

    __tablename__ = "metrics"

    asset_id: Mapped[str] = mapped_column(
        sa.ForeignKey("assets.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    value: Mapped[float] = mapped_column(sa.Double)

    asset: Mapped[Asset] = relationship(back_populates="metrics")


class PromptIndex(Base):
    """Search entry of an asset: its prompt text, tags and prompt embedding.

    ``embedding`` holds ``(EMBEDDING_DIM,)`` little-endian float32 bytes, readable on every
    dialect; on PostgreSQL with pgvector a migration adds a ``vector(384)`` copy
    (:data:`PG_VECTOR_COLUMN`) that :mod:`storage.search` maintains and queries.
    """

    __tablename__ = "prompt_index"

    asset_id: Mapped[str] = mapped_column(
        sa.ForeignKey("assets.id", ondelete="CASCADE"), primary_key=True
    )
    text: Mapped[str] = mapped_column(sa.Text)
    tags: Mapped[list[str]] = mapped_column(default=list)
    embedding: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow, index=True)


API_TOKEN_SCOPES = ("read", "write")


class ApiToken(Base):
    """A bearer token of the HTTP API: its name, scope and the sha256 of its secret.

    The secret itself is shown once when the token is created and never stored.
    """

    __tablename__ = "api_tokens"
    __table_args__ = (sa.CheckConstraint(_in("scope", API_TOKEN_SCOPES), name="scope"),)

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(sa.String(128), unique=True)
    scope: Mapped[str] = mapped_column(sa.String(16))
    token_sha256: Mapped[str] = mapped_column(sa.String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
