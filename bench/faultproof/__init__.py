"""Fault proof (issue 12): continuous HTTPS ingest and a direct idempotent producer while a
broker is killed, then an independent consumer that checks every acknowledged record is on
the topic exactly once.

* ``target``: what the load writes to, provisioned through Sluice's own services (a tenant,
  a stream with a JSON Schema, an HTTPS device group that is also Kafka-direct, devices with
  certificates from the tenant CA) and the verifier's own credential and read grant;
* ``load``: the HTTPS devices (mTLS, keep-alive, a unique ``X-Request-Id`` per request) and
  the direct producer, recording every answer;
* ``verify``: the independent reader (``isolation.level=read_committed``) and the verdict;
* ``broker``: ``kill -9`` and restart of a broker the platform's launcher started.

Used by the tests (``tests/faults/``) and by ``bench/faults.py`` for the longer run.
"""
