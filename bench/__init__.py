"""`make bench`: benchmarks against the local services (tools/services.py)."""

from tools.services import export_client_environment

# configs/services.yaml reaches Trino with the services' password and CA, read from the
# environment: every benchmark, and every `citygate serve` it starts, finds them there.
export_client_environment()
