"""Stand-ins for the kubelet, for tests and demos: real gRPC servers and clients over unix
sockets, built from the same generated stubs the agent serves."""
