"""The columnar engine's kernels: one module per signal, each beside its reference class.

``purchases``, ``trend``, ``engagement`` and ``service`` fold one event into a row of the
customer table (:mod:`churnwatch.core.columns`) exactly as the classes of
:mod:`churnwatch.core.signals` fold it into a customer's state; ``fold`` runs a micro-batch
through them in arrival order (dedupe and lateness included); ``scoring`` assesses many rows at
once as :mod:`churnwatch.core.scoring` assesses one. The folds are numba functions compiled
once and cached on disk (``NUMBA_CACHE_DIR``), the assessment plain numpy.
"""
