"""Generated protobuf and gRPC code for promptbo.v1 (see scripts/gen_protos.sh)."""
