"""Generated protobuf/gRPC code of the fm_agent.v1 wire contract (protos/fm_agent_client/v1/policy.proto)."""
