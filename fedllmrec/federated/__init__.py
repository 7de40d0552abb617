"""Federated runtime: ownership, the client population, one round, engines, aggregation.

Data flows one way (docs/architecture.md): models declare who owns each tensor
(:mod:`fedllmrec.models.owners`); this package checks the declaration
(:mod:`.ownership`), describes the clients (:mod:`.population`), runs a round in
one place (:mod:`.round`: plan, local training by an engine of :mod:`.engines`,
every upload through the seam of :mod:`.uploads`, aggregation in
:mod:`.aggregation` and the server optimiser of :mod:`.fedopt`), and wraps it all as
a trainable recommender (:mod:`.simulator`). The Flower app
(:mod:`fedllmrec.apps.flower`) runs the same round with messages between.
"""
