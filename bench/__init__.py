"""The check-path benchmark: ``python -m bench`` (or ``make bench``) writes ``docs/benchmarks.md``.

One run starts a throwaway PostgreSQL cluster, seeds it with valid sessions, and measures with ``wrk``
(each against a baseline measured in the same run, because absolute numbers drift on shared machines):

- a bare aiohttp handler (the HTTP floor) against the gateway's ``/auth/webhook`` answered from its cache;
- the raw aiopg point lookup the store does, in a loop, against ``/auth/webhook`` missing the cache;
- the gateway's memory before and after a flood of distinct unknown tokens (the negative cache must bound it).

Modules: :mod:`bench.run` (orchestration and the command line), :mod:`bench.database` (cluster and seed),
:mod:`bench.servers` (baseline servers and the raw lookup loop, run as subprocesses),
:mod:`bench.wrk` (driving and parsing ``wrk``), :mod:`bench.procs` (process groups, RSS),
:mod:`bench.promtext` (reading ``/metrics``) and :mod:`bench.report` (table and Markdown).
"""
