//! Wire types of the husk agent API, shared by the shim and the agent.
