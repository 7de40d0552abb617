"""Protections in the round's upload seam: secure aggregation, client-level DP, risk weights.

* :mod:`.client`: what each client does before its upload leaves it (personality-aware
  weight, clipping, local or distributed noise);
* :mod:`.secure`: secure aggregation's output, the round's sum (and the vectors a real
  protocol such as Flower's SecAgg+ masks);
* :mod:`.release`: the server's DP mechanism (central noise, the fixed-scale mean);
* :mod:`.accountant`: epsilon from Google's ``dp-accounting``.

docs/privacy.md says what each protects against, as measured by the audits.
"""

from fedllmrec.federated.privacy.accountant import Accountant
from fedllmrec.federated.privacy.client import ClientPrivacy, clip_deltas, upload_norms
from fedllmrec.federated.privacy.release import DPRelease, HeaderCode, Released
from fedllmrec.federated.privacy.secure import Layout, SecureSum, pack, unpack

__all__ = [
    "Accountant",
    "ClientPrivacy",
    "DPRelease",
    "HeaderCode",
    "Layout",
    "Released",
    "SecureSum",
    "clip_deltas",
    "pack",
    "unpack",
    "upload_norms",
]
