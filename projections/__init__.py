"""Projections: fold the event streams into ClickHouse tables (history, audit, log archive)."""
