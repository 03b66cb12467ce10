"""The use cases: the outbound and inbound pipelines, signals, retries and time-outs, alerts.

Everything here works through the store's unit of work and the pure protocol packages; I/O to
partners goes through ``transport``. ``bootstrap.build_engine`` wires a concrete engine.
"""
