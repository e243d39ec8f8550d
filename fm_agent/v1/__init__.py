"""Generated gRPC/protobuf code for the fm_agent.v1 wire contract (see protos/)."""
