"""Developer tooling: local services for tests, benchmarks and the demo on Trino."""
