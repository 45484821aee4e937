"""The scoring core: events, per-customer state, score, tiers, reasons, the shard's engine and the
records every layer exchanges. Pure: no I/O, no clock, no adapter."""
