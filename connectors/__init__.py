"""Engines and stores: how to run a sqlglot tree on Trino or the embedded DuckDB, and read a catalogue."""
