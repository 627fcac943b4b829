"""Serving machinery, below nothing but the entry point (``gateway serve``): process start and the worker
supervisor (:mod:`.server`), the fast lane in front of aiohttp (:mod:`.fastlane`), the merge of worker
metrics (:mod:`.workermetrics`) and the garbage-collection policy (:mod:`.gcpolicy`).

Nothing outside this package imports it except the CLI. The endpoints it serves are defined beneath it
(:mod:`gateway.handlers`), never in :mod:`gateway.app`, which only builds them.
"""
