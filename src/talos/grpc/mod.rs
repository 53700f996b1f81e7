//! The Talos gRPC client, wire-compatible with machine.MachineService and cosi.resource.State.
