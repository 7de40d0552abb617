"""Attacks on what a federation reveals: what the server (and others) can infer.

``fedllmrec audit RUN_DIR`` (:func:`audit_run`): the server's view replayed
(:mod:`.views`), attacks on it and on the final model (:mod:`.attacks`,
:mod:`.membership`), one report (:mod:`.report`); for the LLM's adapters,
:mod:`.adapters`. docs/privacy.md has the numbers.
"""

from fedllmrec.audits.adapters import (
    AdapterAuditConfig,
    adapter_audit_table,
    adapter_item_inference,
    audit_adapter_run,
)
from fedllmrec.audits.attacks import (
    attribute_inference,
    attribute_targets,
    code_recovery,
    itemset_reconstruction,
)
from fedllmrec.audits.membership import membership_inference
from fedllmrec.audits.report import audit_run, audit_table
from fedllmrec.audits.views import ServerView, replay_server_view, row_norms

__all__ = [
    "AdapterAuditConfig",
    "ServerView",
    "adapter_audit_table",
    "adapter_item_inference",
    "attribute_inference",
    "attribute_targets",
    "audit_adapter_run",
    "audit_run",
    "audit_table",
    "code_recovery",
    "itemset_reconstruction",
    "membership_inference",
    "replay_server_view",
    "row_norms",
]
