"""envoy.filters.http.grpc_web: gRPC-Web clients (HTTP/1.1, browsers) to gRPC servers."""
