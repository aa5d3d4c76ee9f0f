//! Shares of a limit: which guaranteed share of a limit's counter a consumer draws from.
//!
//! A limit with `shares: { acme: 25%, others: 50% }` is split into one group per listed
//! consumer plus one group `*` that every unlisted consumer shares (guarantee `default_share`,
//! 0% when absent). Guarantees are `floor(requests × share)`; the admission rule (own
//! guarantee, or with `borrow` capacity no guarantee covers and — with `borrow: true`, the
//! default — idle groups' unused guarantees) lives in `tollgate_state`
//! (`algo::evaluate_shared`, the Lua script mirrors it). With `default_share: deny` an
//! unlisted consumer has no group: the limits stage refuses it with 403 `consumer_not_allowed`
//! naming the API and the limit (in report mode the refusal is only recorded and the request
//! is counted in no group).

use std::collections::HashMap;
use std::sync::Arc;

use tollgate_config::traffic::{self as config, DefaultShare, share_millionths};
use tollgate_config::{Limit, LimitAlgorithm};
use tollgate_state::{Borrow, ShareGroup, ShareOf, ShareSpec, guarantee};

/// Name of the group of consumers a limit's `shares` does not list.
pub const UNLISTED: &str = "*";

/// One limit's compiled shares.
#[derive(Debug)]
pub(crate) struct CompiledShares {
    spec: Arc<ShareSpec>,
    /// Listed consumer → group index.
    groups: HashMap<Arc<str>, usize>,
    /// Group of unlisted consumers; `None` with `default_share: deny`.
    unlisted: Option<usize>,
}

impl CompiledShares {
    /// `None` for a limit without shares (or a GCRA limit, which validation rejects).
    pub(crate) fn compile(l: &Limit) -> Option<Self> {
        let shares = l.shares.as_ref()?;
        if l.algorithm == LimitAlgorithm::Gcra {
            return None;
        }
        let mut groups = HashMap::new();
        let mut list = Vec::with_capacity(shares.len() + 1);
        for (name, p) in shares {
            groups.insert(Arc::from(name.as_str()), list.len());
            list.push(ShareGroup {
                name: name.clone(),
                guarantee: guarantee(l.requests, share_millionths(*p)),
            });
        }
        let unlisted = match l.default_share {
            Some(DefaultShare::Deny) => None,
            other => {
                let g = match other {
                    Some(DefaultShare::Share(p)) => guarantee(l.requests, share_millionths(p)),
                    _ => 0,
                };
                list.push(ShareGroup {
                    name: UNLISTED.to_owned(),
                    guarantee: g,
                });
                Some(list.len() - 1)
            }
        };
        Some(Self {
            spec: Arc::new(ShareSpec {
                groups: list,
                borrow: match l.borrow.unwrap_or_default() {
                    config::Borrow::Off => Borrow::Off,
                    config::Borrow::Unallocated => Borrow::Unallocated,
                    config::Borrow::Idle => Borrow::Idle,
                },
            }),
            groups,
            unlisted,
        })
    }

    /// The consumer's group, or `None` when it has no share (`default_share: deny`).
    pub(crate) fn of(&self, consumer: &str) -> Option<ShareOf> {
        let group = self.groups.get(consumer).copied().or(self.unlisted)?;
        Some(ShareOf {
            spec: self.spec.clone(),
            group,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(yaml: &str) -> Limit {
        let src = format!(
            "consumers:
  - {{ name: acme, identify: {{ header: {{ name: x-c, value: acme }} }} }}
  - {{ name: others, identify: {{ header: {{ name: x-c, value: others }} }} }}
apis:
  - name: a
    hosts: [a.example.com]
    limits: [{yaml}]
"
        );
        tollgate_config::load_str(&src, "t.yaml")
            .unwrap()
            .config
            .apis
            .remove(0)
            .limits
            .remove(0)
    }

    #[test]
    fn groups_guarantees_and_unlisted() {
        let c = CompiledShares::compile(&limit(
            "{ name: l, requests: 10, per: 1m, shares: { others: 70%, acme: 25% }, default_share: 5% }",
        ))
        .unwrap();
        // Listed consumers in name order, then the unlisted group.
        let names: Vec<(&str, u64)> = c
            .spec
            .groups
            .iter()
            .map(|g| (g.name.as_str(), g.guarantee))
            .collect();
        assert_eq!(names, [("acme", 2), ("others", 7), ("*", 0)]);
        assert_eq!(c.spec.borrow, Borrow::Idle);
        assert_eq!(c.of("acme").unwrap().group, 0);
        assert_eq!(c.of("stranger").unwrap().group, 2);

        let d = CompiledShares::compile(&limit(
            "{ name: l, requests: 10, per: 1m, shares: { acme: 50% }, default_share: deny, borrow: false }",
        ))
        .unwrap();
        assert!(d.of("stranger").is_none());
        assert_eq!(d.spec.groups.len(), 1);
        assert_eq!(d.spec.borrow, Borrow::Off);
        let u = CompiledShares::compile(&limit(
            "{ name: l, requests: 10, per: 1m, shares: { acme: 50% }, borrow: unallocated }",
        ))
        .unwrap();
        assert_eq!(u.spec.borrow, Borrow::Unallocated);
        assert!(CompiledShares::compile(&limit("{ name: l, requests: 10, per: 1m }")).is_none());
    }
}
