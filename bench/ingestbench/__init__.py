"""The parts of ``bench/ingest.py``: the workload (record and schemas), the scratch platform
and its CPU accounting, provisioning through Sluice's services, the load generators (HTTPS
clients and the direct producer), the do-nothing floor stack, measured windows and the
report."""
