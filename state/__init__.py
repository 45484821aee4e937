"""The state stores: a shard's customers and aggregates kept in Redis, a Redis Cluster or memory,
behind one ``StateStore`` protocol (``base.py``); imports only the scoring core."""
