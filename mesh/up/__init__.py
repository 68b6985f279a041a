"""``meshgate up``: a whole stack (control plane, gateway, apps with sidecars) from one file."""
