"""Observation: the audit trail, metrics, logs and telemetry."""
