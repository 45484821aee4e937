"""The Bytewax dataflow (``flow.py``) and its sources: files, Redis Streams, Kafka, the simulator;
imports the scoring core and the state stores."""
