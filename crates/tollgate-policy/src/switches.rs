//! Emergency switches, flipped through the admin API and effective on the next
//! request: deny everything, or deny one API or one consumer. They live outside
//! the compiled [`crate::Policy`] so that a config reload does not clear them.

use std::collections::BTreeSet;
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Serialize;

/// The current switch positions (copy-on-write; reads are lock-free).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SwitchState {
    pub deny_all: bool,
    pub denied_apis: BTreeSet<String>,
    pub denied_consumers: BTreeSet<String>,
}

#[derive(Debug, Default)]
pub struct Switches {
    state: ArcSwap<SwitchState>,
}

impl Switches {
    pub fn snapshot(&self) -> Arc<SwitchState> {
        self.state.load_full()
    }

    pub fn set_deny_all(&self, on: bool) {
        self.state.rcu(|s| SwitchState {
            deny_all: on,
            ..(**s).clone()
        });
    }

    pub fn set_api(&self, name: &str, denied: bool) {
        self.state.rcu(|s| {
            let mut next = (**s).clone();
            if denied {
                next.denied_apis.insert(name.to_owned());
            } else {
                next.denied_apis.remove(name);
            }
            next
        });
    }

    pub fn set_consumer(&self, name: &str, denied: bool) {
        self.state.rcu(|s| {
            let mut next = (**s).clone();
            if denied {
                next.denied_consumers.insert(name.to_owned());
            } else {
                next.denied_consumers.remove(name);
            }
            next
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_flip() {
        let s = Switches::default();
        s.set_api("github", true);
        s.set_consumer("ci", true);
        s.set_deny_all(true);
        let snap = s.snapshot();
        assert!(
            snap.deny_all
                && snap.denied_apis.contains("github")
                && snap.denied_consumers.contains("ci")
        );
        s.set_api("github", false);
        assert!(!s.snapshot().denied_apis.contains("github"));
    }
}
