"""The master: HTTP API, job planning, and the scheduler loop (retries, leases, timeouts)."""
