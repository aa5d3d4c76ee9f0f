//! Tollgate's request pipeline and policy stages. No sockets here: the proxy
//! parses a request into a [`RequestInfo`], asks [`Policy::evaluate`] for an
//! [`Evaluation`], and acts on it. Each stage lives in `stage/<name>.rs` with its
//! logic; its config type lives in `tollgate-config`.

pub mod error;
pub mod evaluation;
mod host;
mod pattern;
pub mod pipeline;
pub mod request;
mod stage;
pub mod switches;
#[cfg(test)]
mod test_support;

pub use error::{ErrorCode, Fault, GatewayError};
pub use evaluation::{Evaluation, Outcome, TraceStep, Verdict};
pub use pipeline::{PathError, Policy};
pub use request::{ClientCert, RequestInfo, Scheme, Target, TrafficKind};
pub use stage::credentials::{ApiCredentials, CredentialKey, OAuth2Spec};
pub use stage::dlp;
pub use stage::dlp::{BodyKind, DlpProfile, DlpRef, Finding, Oversize, Scan};
pub use stage::headers::{CompiledOps, CompiledRules, HeaderVars};
pub use stage::jwt::Jwks;
pub use stage::limits::{
    LimitInfo, LimitOutcome, LimitPlan, LimitResult, LimitVerdict, PlannedLimit, ResponseCost,
};
pub use switches::{SwitchState, Switches};
pub use tollgate_state::{Decision, LimitRequest, LocalStore};
