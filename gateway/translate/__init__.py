"""Protocol translation at the edge: gRPC-Web to gRPC (``grpcweb``); more to come (issue 7)."""
