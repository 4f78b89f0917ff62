"""sluicectl: fetches, configures, starts, watches and stops Sluice's processes.

Run through ``platform/bin/sluice``, which prepares the virtualenv and puts both the
repository root and ``platform/`` on PYTHONPATH.  (``platform/`` itself is never a package:
it would shadow the standard library's ``platform`` module.)
"""
