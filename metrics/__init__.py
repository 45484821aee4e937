"""Prometheus metrics: what the pipeline did (``pipeline.py``) and the business figures read from
the store at scrape time (``business.py``); beside them the alerting and recording rules and the
Alertmanager routes. Imports the scoring core and the state stores."""
