"""Brokers: the queue/store contract (``base``) and its implementations, picked by URL scheme."""
