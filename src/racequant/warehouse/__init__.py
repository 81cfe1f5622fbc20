"""The warehouse: the only package that opens DuckDB."""

from racequant.warehouse.connection import connect, connect_read_only, migrate

__all__ = ["connect", "connect_read_only", "migrate"]
