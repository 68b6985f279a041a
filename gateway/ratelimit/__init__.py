"""Rate limiting at the edge: one atomic Redis script per decision, local fallback."""
