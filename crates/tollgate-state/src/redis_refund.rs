//! Refunds in Redis: gives back what `check_all.lua` charged a request that then did not go
//! ahead (a concurrency limit refused it after the rate limits admitted it), so a request
//! refused by one limit consumes none of the others. One atomic script call per request, keyed
//! like the charge (every key in the API's hash slot), with Redis' own clock.

use std::sync::LazyLock;

use super::{RedisStore, edges_arg, map_err};
use crate::algo::{aligned_len_ms, calendar_edges, emission_interval_us};
use crate::local::refund_key;
use crate::{LimitRequest, LimitSpec, StoreError};

static REFUND: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("refund.lua")));

impl RedisStore {
    /// Gives back each request's `cost` (see [`crate::algo::refund`] for the rules). Returns how
    /// many counters changed (a window that has ended since the charge has nothing to give
    /// back).
    pub async fn refund(&self, reqs: &[LimitRequest]) -> Result<u64, StoreError> {
        let mut inv = REFUND.prepare_invoke();
        let mut any = false;
        for r in reqs.iter().filter(|r| r.cost > 0) {
            inv.key(self.redis_key(&refund_key(r)));
            match r.spec {
                LimitSpec::FixedWindow { window, .. } => match aligned_len_ms(window) {
                    Some(len) => {
                        inv.arg("f").arg(len);
                    }
                    None => {
                        let edges = calendar_edges(window, crate::local::now_ms());
                        inv.arg("m").arg(edges_arg(&edges));
                    }
                },
                LimitSpec::Sliding { window_ms, .. } => {
                    inv.arg("s").arg(window_ms.max(1));
                }
                LimitSpec::Gcra { rate_per_sec, .. } => {
                    inv.arg("g").arg(emission_interval_us(rate_per_sec));
                }
            }
            inv.arg(r.cost);
            any = true;
        }
        if !any {
            return Ok(0);
        }
        let mut conn = self.conn.clone();
        let n: i64 = tokio::time::timeout(self.timeout, inv.invoke_async(&mut conn))
            .await
            .map_err(|_| StoreError::Unavailable(format!("no answer within {:?}", self.timeout)))?
            .map_err(map_err)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}
