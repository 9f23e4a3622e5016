"""Generated gRPC code for the V2 protocol (see generate.sh); do not edit by hand."""
