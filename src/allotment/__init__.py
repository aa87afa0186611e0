"""allotment: Kubernetes-native entitlements with OpenMeter's semantics.

The import root. Subpackages map the repository's top-level directories:
``allotment.ledger`` (``ledger/``), ``allotment.operator`` (``operator/``),
``allotment.sidecar`` (``sidecar/``) and ``allotment.cli`` (``cli/``).
"""

__version__ = "0.1.0"
