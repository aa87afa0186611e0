"""The Kopf operator: thin handlers that parse, reconcile through the ledger and write status.

Role: configure Kopf (``startup``), reconcile each allotment kind level-based (``handlers``), turn
ledger outcomes into kstatus conditions (``status``), warn at admission (``admission``) and inject
the sidecar into labelled Pods (``injection``). Every number is decided by the ledger.

Must not: decide anything about money, import the sidecar, or be importable as ``operator``.
"""
