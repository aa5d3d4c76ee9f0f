//! Fleet bookkeeping in the shared Redis, beside the counters: instance heartbeats (so each
//! gateway knows how many share a limit, for its fair share when Redis becomes unreachable) and
//! listing counter keys for the admin API.
//!
//! Heartbeats live in one sorted set `<prefix>:instances` scored by Redis' own clock (ms), so
//! skewed gateway clocks do not matter. Members older than the TTL are dropped on every beat.

use std::sync::LazyLock;
use std::time::Duration;

use super::{RedisStore, map_err};
use crate::StoreError;

static HEARTBEAT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return redis.call('ZCARD', KEYS[1])
",
    )
});

impl RedisStore {
    /// Announces `member` as alive and returns how many instances announced themselves within
    /// `ttl` (at least 1: this one).
    pub async fn heartbeat(&self, member: &str, ttl: Duration) -> Result<u64, StoreError> {
        let key = format!("{}:instances", self.prefix);
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut inv = HEARTBEAT.prepare_invoke();
        inv.key(key).arg(member).arg(ttl_ms);
        let mut conn = self.conn.clone();
        let n: i64 = tokio::time::timeout(self.timeout, inv.invoke_async(&mut conn))
            .await
            .map_err(|_| StoreError::Unavailable(format!("no answer within {:?}", self.timeout)))?
            .map_err(map_err)?;
        Ok(u64::try_from(n).unwrap_or(0).max(1))
    }

    /// Removes `member` from the live instances (on shutdown), best effort.
    pub async fn leave(&self, member: &str) -> Result<(), StoreError> {
        let key = format!("{}:instances", self.prefix);
        let mut conn = self.conn.clone();
        let _: i64 = tokio::time::timeout(
            self.timeout,
            redis::cmd("ZREM")
                .arg(key)
                .arg(member)
                .query_async(&mut conn),
        )
        .await
        .map_err(|_| StoreError::Unavailable(format!("no answer within {:?}", self.timeout)))?
        .map_err(map_err)?;
        Ok(())
    }

    /// Counter keys (in the caller's form, `<group>:<rest>`) that start with `key_prefix`
    /// (`<api>:<limit>:`), at most `max` of them. Uses `SCAN`, so it never blocks Redis; each
    /// round trip is bounded by the timeout, the whole listing by `max`.
    pub async fn keys_with_prefix(
        &self,
        key_prefix: &str,
        max: usize,
    ) -> Result<Vec<String>, StoreError> {
        let pattern = format!("{}*", glob_escape(&self.redis_key(key_prefix)));
        let (group, _) = key_prefix.split_once(':').unwrap_or((key_prefix, ""));
        let tag = format!("{{{}:{group}}}:", self.prefix);
        let mut conn = self.conn.clone();
        let mut cursor: u64 = 0;
        let mut out = Vec::new();
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(500);
            // All of a group's keys share its hash tag, hence one node in a Cluster.
            let (next, batch): (u64, Vec<String>) = tokio::time::timeout(
                self.timeout.max(Duration::from_millis(500)),
                conn.query_on_slot(scan, &tag),
            )
            .await
            .map_err(|_| StoreError::Unavailable("SCAN did not answer in time".into()))?
            .map_err(map_err)?;
            for k in batch {
                if let Some(rest) = k.strip_prefix(&tag) {
                    out.push(format!("{group}:{rest}"));
                }
                if out.len() >= max {
                    return Ok(out);
                }
            }
            if next == 0 {
                return Ok(out);
            }
            cursor = next;
        }
    }
}

/// Escapes Redis glob metacharacters so a name is matched literally.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
