"""The monitor: dashboard, REST API and Prometheus metrics, all read from the store."""
