"""The worker: fetch loop, heartbeats and leases, and the pool of child processes."""
