"""Generated code of the gRPC reflection v1 service the server registers (protos/fm_agent/v1/reflection_v1.proto); the policy service contract ships with the client (fm_agent_client.v1)."""
