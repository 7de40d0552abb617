"""The federation on Flower (flwr 1.41 Message API): a ServerApp and a ClientApp.

The rounds are :mod:`fedllmrec.federated.round`'s, with messages in place of
function calls: the same seeded sampling and dropout, the same local training
(:meth:`~fedllmrec.federated.server.FederationServer.node_training`, for the sequential
models' federation and the LLM adapters' alike) and upload transforms, the same wire format
(:class:`~fedllmrec.federated.uploads.ClientUpload`) and the same aggregation, so a
Flower run and the in-process simulator agree up to float rounding. Under
``federated.privacy.secure_aggregation`` the local training runs as flwr's SecAgg+, each
SuperNode one party, and the server learns only the round's sum (:mod:`.secagg`). See
:mod:`.config` for the run configuration, :mod:`.client_app` and :mod:`.server_app`.
"""

from fedllmrec.apps.flower.client_app import PRIVATE_STATE, client_app, node_federation
from fedllmrec.apps.flower.config import (
    RUN_CONFIG_DEFAULTS,
    AppConfig,
    RecipeSource,
    node_partition,
    partition_positions,
    tensor_record,
)
from fedllmrec.apps.flower.secagg import SecureCodec, SecureSettings
from fedllmrec.apps.flower.server_app import SumObserver, make_server_app, server_app

__all__ = [
    "PRIVATE_STATE",
    "RUN_CONFIG_DEFAULTS",
    "AppConfig",
    "RecipeSource",
    "SecureCodec",
    "SecureSettings",
    "SumObserver",
    "client_app",
    "make_server_app",
    "node_federation",
    "node_partition",
    "partition_positions",
    "server_app",
    "tensor_record",
]
