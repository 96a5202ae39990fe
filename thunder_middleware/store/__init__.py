"""Persistence of the program registry and environment ownership (SQLite, WAL mode)."""

from thunder_middleware.store.sqlite import SQLiteProgramStore, StoreError

__all__ = ["SQLiteProgramStore", "StoreError"]
