//! Tollgate control plane: fleet registry, signed configuration bundles, the HTTPS API that
//! gateways and operators use, and (in [`agent`]) the gateway-side sync agent.

pub mod agent;
pub mod bundle;
pub mod protocol;
pub mod server;
