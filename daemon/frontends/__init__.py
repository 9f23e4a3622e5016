"""The front-ends: HTTP, gRPC and the Unix socket, their codecs and access control. Each
decodes its wire format, calls the data plane, encodes; none touches the scheduler."""
