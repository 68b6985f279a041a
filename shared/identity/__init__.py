"""Identity: SPIFFE IDs, the built-in CA, trust bundles, SVID rules, mTLS contexts and rotation.

Modules: ``spiffeid`` (parse/validate IDs), ``svid`` (X.509-SVID rule checks), ``bundle`` (SPIFFE trust
bundle), ``ca`` (the CA stored in a directory), ``tls`` (contexts, ``verify_peer``, session
resumption), ``rotation`` (``CertificateManager``), ``cli`` (``meshgate ca ...``).
"""

from .bundle import BundleError, TrustBundle
from .ca import CAError, CertificateAuthority, CsrRejected, make_csr
from .rotation import CertificateManager, RenewalError
from .spiffeid import InvalidSpiffeId, SpiffeId, workload_id
from .svid import SvidError, SvidRule, check_ca, check_leaf, verify_chain
from .tls import MeshClientContext, PeerIdentityError, client_context, server_context, verify_peer

__all__ = [
    "BundleError",
    "CAError",
    "CertificateAuthority",
    "CertificateManager",
    "CsrRejected",
    "InvalidSpiffeId",
    "MeshClientContext",
    "PeerIdentityError",
    "RenewalError",
    "SpiffeId",
    "SvidError",
    "SvidRule",
    "TrustBundle",
    "check_ca",
    "check_leaf",
    "client_context",
    "make_csr",
    "server_context",
    "verify_chain",
    "verify_peer",
    "workload_id",
]
