"""Versioned, idempotent schema migrations of the warehouse.

Each migration runs once, in order, inside a transaction, and is recorded in ``schema_migrations``.
Tables carry no primary-key indexes: DuckDB bulk-loads faster without them, and the loader keeps
keys unique itself (it validates them and replaces whole races).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import duckdb

from racequant.errors import WarehouseError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "races, runners, horses and the import log",
        """
        CREATE SEQUENCE IF NOT EXISTS import_id_seq START 1;
        CREATE TABLE IF NOT EXISTS import_log (
            import_id INTEGER NOT NULL,
            source VARCHAR NOT NULL,
            format VARCHAR NOT NULL,
            path VARCHAR NOT NULL,
            started_at TIMESTAMP NOT NULL,
            finished_at TIMESTAMP NOT NULL,
            races_added INTEGER NOT NULL,
            races_replaced INTEGER NOT NULL,
            races_unchanged INTEGER NOT NULL,
            runners_written INTEGER NOT NULL,
            horses_written INTEGER NOT NULL,
            rows_rejected INTEGER NOT NULL,
            files VARCHAR[]
        );
        CREATE TABLE IF NOT EXISTS races (
            race_id VARCHAR NOT NULL,
            source VARCHAR NOT NULL,
            date DATE NOT NULL,
            track VARCHAR NOT NULL,
            country VARCHAR NOT NULL,
            race_no INTEGER,
            off_time VARCHAR,
            distance_m INTEGER NOT NULL,
            surface VARCHAR NOT NULL,
            going VARCHAR,
            going_raw VARCHAR,
            race_class VARCHAR,
            rating_band VARCHAR,
            prize DOUBLE,
            course_config VARCHAR,
            section_distances_m INTEGER[],
            import_id INTEGER NOT NULL
        );
        CREATE TABLE IF NOT EXISTS runners (
            race_id VARCHAR NOT NULL,
            horse_id VARCHAR NOT NULL,
            horse_name VARCHAR,
            saddle_no INTEGER,
            draw INTEGER,
            jockey_id VARCHAR,
            trainer_id VARCHAR,
            age INTEGER,
            sex VARCHAR,
            carried_weight_lbs DOUBLE,
            horse_weight_lbs DOUBLE,
            rating DOUBLE,
            gear VARCHAR,
            status VARCHAR NOT NULL,
            finish_position INTEGER,
            margin_lengths DOUBLE,
            finish_time_s DOUBLE,
            running_positions INTEGER[],
            section_times_s DOUBLE[],
            win_odds DOUBLE,
            place_odds DOUBLE
        );
        CREATE TABLE IF NOT EXISTS horses (
            horse_id VARCHAR NOT NULL,
            horse_name VARCHAR,
            sire VARCHAR,
            dam VARCHAR,
            damsire VARCHAR,
            country_of_birth VARCHAR,
            sex VARCHAR,
            colour VARCHAR,
            foaled_year INTEGER
        );
        """,
    ),
    Migration(
        2,
        "feature builds log (the features table itself is written whole by each build)",
        """
        CREATE TABLE IF NOT EXISTS feature_runs (
            feature_version VARCHAR NOT NULL,
            built_at TIMESTAMP NOT NULL,
            seconds DOUBLE NOT NULL,
            n_rows BIGINT NOT NULL,
            n_races BIGINT NOT NULL,
            n_features INTEGER NOT NULL,
            first_date DATE,
            last_date DATE,
            manifest_json VARCHAR NOT NULL
        );
        """,
    ),
    Migration(
        3,
        "qualitative likelihood ratios per runner (fusion, issue 6)",
        """
        CREATE TABLE IF NOT EXISTS qualitative_records (
            race_id VARCHAR NOT NULL,
            horse_id VARCHAR NOT NULL,
            horse_name VARCHAR NOT NULL,
            lr_form_fitness DOUBLE NOT NULL,
            lr_conditions DOUBLE NOT NULL,
            lr_tactics DOUBLE NOT NULL,
            lr_context DOUBLE NOT NULL,
            lr_product DOUBLE NOT NULL,
            key_strengths VARCHAR[] NOT NULL,
            key_concerns VARCHAR[] NOT NULL,
            race_narrative VARCHAR NOT NULL,
            qualitative_confidence DOUBLE NOT NULL,
            model_chain VARCHAR NOT NULL,
            prediction_timestamp VARCHAR NOT NULL,
            source VARCHAR NOT NULL,
            stored_at TIMESTAMP NOT NULL
        );
        """,
    ),
    Migration(
        4,
        "backtest runs: parameters and metrics, folds, per-runner test predictions and stakes (backtest, issue 5)",
        """
        CREATE TABLE IF NOT EXISTS backtest_runs (
            run_id VARCHAR NOT NULL,
            created_at TIMESTAMP NOT NULL,
            test_start DATE,
            test_end DATE,
            n_folds INTEGER NOT NULL,
            n_races INTEGER NOT NULL,
            seconds DOUBLE NOT NULL,
            params_json VARCHAR NOT NULL,
            metrics_json VARCHAR NOT NULL
        );
        CREATE TABLE IF NOT EXISTS backtest_folds (
            run_id VARCHAR NOT NULL,
            fold INTEGER NOT NULL,
            train_start DATE NOT NULL,
            train_end DATE NOT NULL,
            fit_end DATE NOT NULL,
            validation_start DATE NOT NULL,
            validation_end DATE NOT NULL,
            calibration_start DATE NOT NULL,
            calibration_end DATE NOT NULL,
            test_start DATE NOT NULL,
            test_end DATE NOT NULL,
            a DOUBLE,
            b DOUBLE,
            b_market_only DOUBLE
        );
        CREATE TABLE IF NOT EXISTS backtest_predictions (
            run_id VARCHAR NOT NULL,
            fold INTEGER NOT NULL,
            race_id VARCHAR NOT NULL,
            horse_id VARCHAR NOT NULL,
            win_prob DOUBLE,
            place_prob DOUBLE,
            win_prob_lower DOUBLE,
            win_prob_upper DOUBLE,
            market_prob DOUBLE,
            combined_prob DOUBLE,
            market_recal_prob DOUBLE,
            stake_win DOUBLE,
            return_win DOUBLE,
            stake_place DOUBLE,
            return_place DOUBLE
        );
        """,
    ),
)

LATEST_VERSION = MIGRATIONS[-1].version


def apply_migrations(
    conn: duckdb.DuckDBPyConnection, migrations: Sequence[Migration], *, table: str, what: str
) -> list[int]:
    """Apply every migration not yet recorded in ``table``, each in its own transaction; return those applied.

    ``what`` names the database in messages ("warehouse", "prediction log"). A database newer than this code is
    refused rather than guessed at.
    """
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {table} ("
        " version INTEGER NOT NULL, description VARCHAR NOT NULL, applied_at TIMESTAMP NOT NULL)"
    )
    done = {row[0] for row in conn.execute(f"SELECT version FROM {table}").fetchall()}
    latest = migrations[-1].version
    if done and max(done) > latest:
        raise WarehouseError(
            f"The {what} has schema version {max(done)}, newer than this racequant knows ({latest}); upgrade racequant."
        )
    applied = []
    for migration in migrations:
        if migration.version in done:
            continue
        conn.execute("BEGIN TRANSACTION")
        try:
            conn.execute(migration.sql)
            conn.execute(
                f"INSERT INTO {table} VALUES (?, ?, now()::TIMESTAMP)", [migration.version, migration.description]
            )
            conn.execute("COMMIT")
        except Exception:
            conn.execute("ROLLBACK")
            raise
        logger.info("Applied %s migration %d: %s", what, migration.version, migration.description)
        applied.append(migration.version)
    return applied
