"""Federated runtime: parameter ownership, client updates, aggregation, the simulator.

Data flows one way: models declare who owns each tensor
(:mod:`fedllmrec.models.owners`); this package checks the declaration
(:mod:`.ownership`), trains clients (:mod:`.client`), aggregates their uploads
(:mod:`.strategies`, :mod:`.server`) and runs rounds in process
(:mod:`.simulator`) or on Flower (:mod:`.flower`).
"""
