//! Provider back-off shared through Redis: when one gateway learns that a provider's rate limit
//! is exhausted it records `<prefix>:{<api>}:backoff` with a `PX` expiry of the back-off, and
//! every gateway reads the time left (`PTTL`), so all replicas stop sending until the reset.
//! A write never shortens a longer back-off already recorded. A credential key's back-off is
//! `<prefix>:{<api>}:backoff:<key>`, in the same hash slot, so one call reads an API's and all
//! its keys' back-offs.

use std::sync::LazyLock;
use std::time::Duration;

use super::{RedisStore, map_err};
use crate::StoreError;

static EXTEND: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local left = redis.call('PTTL', KEYS[1])
local want = tonumber(ARGV[1])
if left < want then
  redis.call('SET', KEYS[1], '1', 'PX', want)
  return want
end
return left
",
    )
});

static LEFT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local out = {}
for i = 1, #KEYS do out[i] = redis.call('PTTL', KEYS[i]) end
return out
",
    )
});

impl RedisStore {
    /// The Redis key of API `api`'s shared back-off (`key`: of one credential key instead).
    pub fn backoff_key(&self, api: &str, key: Option<&str>) -> String {
        match key {
            None => format!("{}:{{{api}}}:backoff", self.prefix),
            Some(k) => format!("{}:{{{api}}}:backoff:{k}", self.prefix),
        }
    }

    /// Records a back-off of `wait` under `redis_key` unless a longer one is recorded.
    pub async fn extend_backoff(&self, redis_key: &str, wait: Duration) -> Result<(), StoreError> {
        let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut inv = EXTEND.prepare_invoke();
        inv.key(redis_key).arg(ms);
        let mut conn = self.conn.clone();
        let _: i64 = tokio::time::timeout(self.timeout, inv.invoke_async(&mut conn))
            .await
            .map_err(|_| StoreError::Unavailable(format!("no answer within {:?}", self.timeout)))?
            .map_err(map_err)?;
        Ok(())
    }

    /// Time left of the back-off recorded under `redis_key` (`None`: none).
    pub async fn backoff_left(&self, redis_key: &str) -> Result<Option<Duration>, StoreError> {
        let mut conn = self.conn.clone();
        let ms: i64 = tokio::time::timeout(
            self.timeout,
            redis::cmd("PTTL").arg(redis_key).query_async(&mut conn),
        )
        .await
        .map_err(|_| StoreError::Unavailable(format!("no answer within {:?}", self.timeout)))?
        .map_err(map_err)?;
        Ok(u64::try_from(ms)
            .ok()
            .filter(|&m| m > 0)
            .map(Duration::from_millis))
    }

    /// Time left of each back-off recorded under `redis_keys` (all of one API, so one hash
    /// slot), in order; `None` where there is none.
    pub async fn backoffs_left(
        &self,
        redis_keys: &[String],
    ) -> Result<Vec<Option<Duration>>, StoreError> {
        if redis_keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = LEFT.prepare_invoke();
        for k in redis_keys {
            inv.key(k);
        }
        let mut conn = self.conn.clone();
        let ms: Vec<i64> = tokio::time::timeout(self.timeout, inv.invoke_async(&mut conn))
            .await
            .map_err(|_| StoreError::Unavailable(format!("no answer within {:?}", self.timeout)))?
            .map_err(map_err)?;
        Ok(ms
            .into_iter()
            .map(|m| {
                u64::try_from(m)
                    .ok()
                    .filter(|&m| m > 0)
                    .map(Duration::from_millis)
            })
            .collect())
    }
}
