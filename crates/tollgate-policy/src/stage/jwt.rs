//! JWT bearer tokens on routes (docs/auth.md): signature checked against the
//! issuer's JWKS, then `iss`, `aud`, `exp`/`nbf` (with leeway), and the
//! issuer's `consumer_claim` names the consumer.
//!
//! Only `RS256`, `ES256` and `EdDSA` are verified (with aws-lc-rs, the same
//! provider rustls uses); `none` and HMAC algorithms are refused before any
//! key is looked at, so a public key can never be used as an HMAC secret.
//! Keys are held per issuer in a [`Jwks`] that the proxy's background task
//! fills (tollgate-proxy `jwks.rs`); this module never does I/O. A token whose
//! `kid` is not in the set asks that task for a refetch ([`Jwks::wanted`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use aws_lc_rs::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use tokio::sync::Notify;
use tollgate_config::{Config, Identify, JwtAlgorithm};

use crate::pipeline::PathError;

/// Refusal texts: shown to the client, so they never carry token contents.
const MALFORMED: &str = "the bearer token is not a valid JWT";
const BAD_ALG: &str = "the token's algorithm is not allowed";
const BAD_ISS: &str = "the token's issuer is not trusted";
const NO_KID: &str = "the token has no key id (kid)";
const UNKNOWN_KID: &str = "the token's key id is not in the issuer's key set";
const KEY_MISMATCH: &str = "the token's algorithm does not match its key";
const BAD_SIG: &str = "the token's signature is not valid";
const EXPIRED: &str = "the token has expired";
const NOT_YET: &str = "the token is not valid yet";
const NO_EXP: &str = "the token has no expiry (exp)";
const BAD_AUD: &str = "the token's audience is not accepted";
const NO_CONSUMER: &str = "the token names no configured consumer";

#[derive(Debug)]
enum KeyMaterial {
    /// Big-endian modulus (no leading zeros) and exponent.
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// Uncompressed P-256 point (`04 || x || y`).
    P256(Vec<u8>),
    Ed25519(Vec<u8>),
}

#[derive(Debug)]
struct Jwk {
    material: KeyMaterial,
    /// The JWK's own `alg`, when it names one.
    alg: Option<JwtAlgorithm>,
}

/// One issuer's signing keys, replaced whole on every successful fetch so old
/// and new keys are both valid while the issuer publishes both.
#[derive(Debug)]
pub struct Jwks {
    /// The `auth.jwt[].name` this set belongs to.
    pub name: String,
    pub url: String,
    pub refresh: Duration,
    pub min_refetch: Duration,
    keys: ArcSwap<HashMap<String, Jwk>>,
    /// Unix milliseconds of the last fetch attempt (0: never).
    last_fetch_ms: AtomicU64,
    /// A request presented a key id the set does not have.
    pub wanted: Notify,
    /// The keys were replaced (waiting requests look again).
    pub changed: Notify,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Jwks {
    fn new(name: &str, url: &str, refresh: Duration, min_refetch: Duration) -> Self {
        Self {
            name: name.to_owned(),
            url: url.to_owned(),
            refresh,
            min_refetch,
            keys: ArcSwap::from_pointee(HashMap::new()),
            last_fetch_ms: AtomicU64::new(0),
            wanted: Notify::new(),
            changed: Notify::new(),
        }
    }

    /// Replaces the keys with those of a JWKS document; returns how many are
    /// usable. Keys Tollgate cannot use (other algorithms, `use: enc`, no
    /// `kid`) are skipped; a document with none usable is an error and the
    /// previous keys stay.
    pub fn load(&self, body: &[u8]) -> Result<usize, String> {
        self.mark_fetch();
        let doc: Value =
            serde_json::from_slice(body).map_err(|_| "the JWKS is not JSON".to_owned())?;
        let list = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| "the JWKS has no `keys` array".to_owned())?;
        let keys: HashMap<String, Jwk> = list.iter().filter_map(parse_jwk).collect();
        if keys.is_empty() {
            return Err("the JWKS has no usable RS256, ES256 or EdDSA signing key".to_owned());
        }
        let n = keys.len();
        self.keys.store(Arc::new(keys));
        self.changed.notify_waiters();
        Ok(n)
    }

    /// Records a fetch attempt (successful or not), for the refetch rate limit.
    pub fn mark_fetch(&self) {
        self.last_fetch_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// How long until a refetch is allowed (`min_refetch` after the last fetch attempt).
    pub fn refetch_in(&self) -> Duration {
        let last = self.last_fetch_ms.load(Ordering::Relaxed);
        let since = Duration::from_millis(now_ms().saturating_sub(last));
        self.min_refetch.saturating_sub(since)
    }

    /// Takes over the keys of the same JWKS from the previous configuration,
    /// so a reload does not refuse tokens until the first fetch.
    pub fn adopt(&self, prev: &Jwks) {
        if prev.url == self.url {
            self.keys.store(prev.keys.load_full());
        }
    }

    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.load().contains_key(kid)
    }

    pub fn key_count(&self) -> usize {
        self.keys.load().len()
    }
}

fn b64(v: &Value, field: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(v.get(field)?.as_str()?).ok()
}

fn parse_alg(s: &str) -> Option<JwtAlgorithm> {
    match s {
        "RS256" => Some(JwtAlgorithm::RS256),
        "ES256" => Some(JwtAlgorithm::ES256),
        "EdDSA" => Some(JwtAlgorithm::EdDSA),
        _ => None,
    }
}

fn parse_jwk(v: &Value) -> Option<(String, Jwk)> {
    let kid = v.get("kid")?.as_str()?.to_owned();
    if v.get("use")
        .and_then(Value::as_str)
        .is_some_and(|u| u != "sig")
    {
        return None;
    }
    let alg = match v.get("alg").and_then(Value::as_str) {
        None => None,
        Some(a) => Some(parse_alg(a)?),
    };
    let crv = v.get("crv").and_then(Value::as_str);
    let material = match (v.get("kty")?.as_str()?, crv) {
        ("RSA", _) => {
            let mut n = b64(v, "n")?;
            let lead = n.iter().take_while(|b| **b == 0).count();
            n.drain(..lead);
            KeyMaterial::Rsa { n, e: b64(v, "e")? }
        }
        ("EC", Some("P-256")) => {
            let (x, y) = (b64(v, "x")?, b64(v, "y")?);
            if x.len() != 32 || y.len() != 32 {
                return None;
            }
            let mut point = Vec::with_capacity(65);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            KeyMaterial::P256(point)
        }
        ("OKP", Some("Ed25519")) => KeyMaterial::Ed25519(b64(v, "x")?),
        _ => return None,
    };
    Some((kid, Jwk { material, alg }))
}

#[derive(Debug)]
struct Issuer {
    iss: String,
    audiences: Vec<String>,
    algorithms: Vec<JwtAlgorithm>,
    leeway: u64,
    claim: String,
    jwks: Arc<Jwks>,
    /// Claim value → consumer index.
    consumers: HashMap<String, usize>,
}

/// Every `auth.jwt` issuer, compiled.
#[derive(Debug, Default)]
pub(crate) struct JwtVerifier {
    issuers: Vec<Issuer>,
}

/// The parts of a token read before its signature is checked.
struct Parsed<'t> {
    alg: Option<JwtAlgorithm>,
    kid: Option<String>,
    claims: Value,
    signed: &'t [u8],
    signature: Vec<u8>,
}

/// Does this bearer value have the shape of a compact JWS (`a.b.c`)?
pub(crate) fn looks_like_jwt(token: &[u8]) -> bool {
    token.iter().filter(|b| **b == b'.').count() == 2
}

fn parse(token: &[u8]) -> Result<Parsed<'_>, &'static str> {
    let text = std::str::from_utf8(token).map_err(|_| MALFORMED)?;
    let mut parts = text.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(MALFORMED);
    };
    let header: Value = URL_SAFE_NO_PAD
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(MALFORMED)?;
    let claims: Value = URL_SAFE_NO_PAD
        .decode(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(Value::is_object)
        .ok_or(MALFORMED)?;
    let signature = URL_SAFE_NO_PAD.decode(s).map_err(|_| MALFORMED)?;
    let alg = header.get("alg").and_then(Value::as_str).ok_or(MALFORMED)?;
    Ok(Parsed {
        alg: parse_alg(alg),
        kid: header.get("kid").and_then(Value::as_str).map(str::to_owned),
        claims,
        signed: &token[..h.len() + 1 + p.len()],
        signature,
    })
}

fn verify_signature(alg: JwtAlgorithm, key: &KeyMaterial, msg: &[u8], sig: &[u8]) -> bool {
    match (alg, key) {
        (JwtAlgorithm::RS256, KeyMaterial::Rsa { n, e }) => RsaPublicKeyComponents { n, e }
            .verify(&signature::RSA_PKCS1_2048_8192_SHA256, msg, sig)
            .is_ok(),
        (JwtAlgorithm::ES256, KeyMaterial::P256(point)) => {
            UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                .verify(msg, sig)
                .is_ok()
        }
        (JwtAlgorithm::EdDSA, KeyMaterial::Ed25519(x)) => {
            UnparsedPublicKey::new(&signature::ED25519, x)
                .verify(msg, sig)
                .is_ok()
        }
        _ => false,
    }
}

fn key_fits(alg: JwtAlgorithm, key: &KeyMaterial) -> bool {
    matches!(
        (alg, key),
        (JwtAlgorithm::RS256, KeyMaterial::Rsa { .. })
            | (JwtAlgorithm::ES256, KeyMaterial::P256(_))
            | (JwtAlgorithm::EdDSA, KeyMaterial::Ed25519(_))
    )
}

impl JwtVerifier {
    pub(crate) fn compile(cfg: &Config, errs: &mut Vec<PathError>) -> Self {
        let mut out = Self::default();
        for (i, j) in cfg.auth.jwt.iter().enumerate() {
            let at = format!("auth.jwt[{i}]");
            let mut bad = |field: &str, message: &str| {
                errs.push(PathError {
                    path: format!("{at}.{field}"),
                    message: message.to_owned(),
                });
            };
            if cfg.auth.jwt[..i].iter().any(|o| o.name == j.name) {
                bad("name", "another auth.jwt entry has this name");
            }
            if j.issuer.is_empty() {
                bad("issuer", "must not be empty");
            }
            let url_ok = j.jwks_url.parse::<http::Uri>().ok().is_some_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
            });
            if !url_ok {
                bad("jwks_url", "must be an http:// or https:// URL");
            }
            if j.audiences.is_empty() || j.audiences.iter().any(String::is_empty) {
                bad("audiences", "list at least one non-empty audience");
            }
            if j.algorithms.is_empty() {
                bad("algorithms", "list at least one of RS256, ES256, EdDSA");
            }
            if j.consumer_claim.is_empty() {
                bad("consumer_claim", "must not be empty");
            }
            out.issuers.push(Issuer {
                iss: j.issuer.clone(),
                audiences: j.audiences.clone(),
                algorithms: j.algorithms.clone(),
                leeway: j.leeway.get().as_secs(),
                claim: j.consumer_claim.clone(),
                jwks: Arc::new(Jwks::new(
                    &j.name,
                    &j.jwks_url,
                    j.refresh.get().max(Duration::from_secs(1)),
                    j.min_refetch_interval.get(),
                )),
                consumers: HashMap::new(),
            });
        }
        for (i, c) in cfg.consumers.iter().enumerate() {
            let Identify::Jwt(id) = &c.identify else {
                continue;
            };
            let at = format!("consumers[{i}].identify.jwt");
            let Some(k) = cfg.auth.jwt.iter().position(|j| j.name == id.issuer) else {
                errs.push(PathError {
                    path: format!("{at}.issuer"),
                    message: format!("no auth.jwt entry is named {:?}", id.issuer),
                });
                continue;
            };
            if let Some(prev) = out.issuers[k].consumers.insert(id.value.clone(), i) {
                errs.push(PathError {
                    path: format!("{at}.value"),
                    message: format!("consumers[{prev}] has the same issuer and value"),
                });
            }
        }
        out
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    pub(crate) fn jwks(&self) -> impl Iterator<Item = &Arc<Jwks>> + '_ {
        self.issuers.iter().map(|i| &i.jwks)
    }

    pub(crate) fn issuer_name(&self, i: usize) -> &str {
        self.issuers.get(i).map_or("?", |i| i.jwks.name.as_str())
    }

    fn issuer_of(&self, claims: &Value) -> Option<(usize, &Issuer)> {
        let iss = claims.get("iss").and_then(Value::as_str)?;
        self.issuers.iter().enumerate().find(|(_, i)| i.iss == iss)
    }

    /// The key set a token needs but does not (yet) hold its `kid`: the proxy
    /// waits briefly for a refetch before evaluating (tollgate-proxy `jwks.rs`).
    pub(crate) fn missing_key(&self, token: &[u8]) -> Option<&Arc<Jwks>> {
        let parsed = parse(token).ok()?;
        let (_, issuer) = self.issuer_of(&parsed.claims)?;
        let kid = parsed.kid?;
        (!issuer.jwks.has_kid(&kid)).then_some(&issuer.jwks)
    }

    /// Verifies `token` and returns (issuer index, consumer index).
    pub(crate) fn verify(&self, token: &[u8]) -> Result<(usize, usize), &'static str> {
        let parsed = parse(token)?;
        let (idx, issuer) = self.issuer_of(&parsed.claims).ok_or(BAD_ISS)?;
        let alg = parsed
            .alg
            .filter(|a| issuer.algorithms.contains(a))
            .ok_or(BAD_ALG)?;
        let kid = parsed.kid.as_deref().ok_or(NO_KID)?;
        let keys = issuer.jwks.keys.load();
        let Some(key) = keys.get(kid) else {
            // Rate-limited by the fetch task (`min_refetch_interval`).
            issuer.jwks.wanted.notify_one();
            return Err(UNKNOWN_KID);
        };
        if key.alg.is_some_and(|a| a != alg) || !key_fits(alg, &key.material) {
            return Err(KEY_MISMATCH);
        }
        if !verify_signature(alg, &key.material, parsed.signed, &parsed.signature) {
            return Err(BAD_SIG);
        }
        let claims = &parsed.claims;
        let now = now_ms() / 1000;
        let exp = claims.get("exp").and_then(Value::as_f64).ok_or(NO_EXP)?;
        // Seconds since the epoch fit an f64 exactly.
        #[allow(clippy::cast_precision_loss)]
        let (now_f, leeway) = (now as f64, issuer.leeway as f64);
        if now_f > exp + leeway {
            return Err(EXPIRED);
        }
        if let Some(nbf) = claims.get("nbf").and_then(Value::as_f64)
            && now_f + leeway < nbf
        {
            return Err(NOT_YET);
        }
        let aud_ok = match claims.get("aud") {
            Some(Value::String(a)) => issuer.audiences.contains(a),
            Some(Value::Array(list)) => list
                .iter()
                .filter_map(Value::as_str)
                .any(|a| issuer.audiences.iter().any(|x| x == a)),
            _ => false,
        };
        if !aud_ok {
            return Err(BAD_AUD);
        }
        let value = claims
            .get(&issuer.claim)
            .and_then(Value::as_str)
            .ok_or(NO_CONSUMER)?;
        let consumer = *issuer.consumers.get(value).ok_or(NO_CONSUMER)?;
        Ok((idx, consumer))
    }
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
    use serde_json::json;

    use super::*;
    use crate::test_support::{compile_errors, config};

    fn key() -> Ed25519KeyPair {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
    }

    fn sign(k: &Ed25519KeyPair, header: Value, claims: Value) -> String {
        let enc = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
        let signing = format!("{}.{}", enc(&header), enc(&claims));
        let sig = k.sign(signing.as_bytes());
        format!("{signing}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    fn cfg() -> Value {
        json!({
            "auth": { "jwt": [{ "name": "idp", "issuer": "https://idp", "jwks_url": "http://127.0.0.1:9/k",
                                "audiences": ["api"], "leeway": "0s" }] },
            "consumers": [{ "name": "svc", "identify": { "jwt": { "issuer": "idp", "value": "svc-1" } } }]
        })
    }

    #[test]
    fn verifies_signature_and_claims() {
        let mut errs = Vec::new();
        let v = JwtVerifier::compile(&config(cfg()), &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        let k = key();
        let jwks = json!({ "keys": [{ "kty": "OKP", "crv": "Ed25519", "kid": "a",
            "x": URL_SAFE_NO_PAD.encode(k.public_key().as_ref()) }] });
        let set = v.jwks().next().unwrap().clone();
        assert_eq!(set.load(jwks.to_string().as_bytes()), Ok(1));
        let now = now_ms() / 1000;
        let claims = |extra: Value| {
            let mut c =
                json!({ "iss": "https://idp", "aud": "api", "sub": "svc-1", "exp": now + 60 });
            for (k, v) in extra.as_object().unwrap() {
                c[k] = v.clone();
            }
            c
        };
        let hdr = json!({ "alg": "EdDSA", "kid": "a" });
        let ok = sign(&k, hdr.clone(), claims(json!({})));
        assert_eq!(v.verify(ok.as_bytes()), Ok((0, 0)));
        let cases = [
            (
                sign(&k, hdr.clone(), claims(json!({ "exp": now - 1 }))),
                EXPIRED,
            ),
            (
                sign(&k, hdr.clone(), claims(json!({ "aud": ["x"] }))),
                BAD_AUD,
            ),
            (
                sign(&k, hdr.clone(), claims(json!({ "iss": "https://other" }))),
                BAD_ISS,
            ),
            (
                sign(&k, hdr.clone(), claims(json!({ "sub": "svc-2" }))),
                NO_CONSUMER,
            ),
            (
                sign(&k, json!({ "alg": "none", "kid": "a" }), claims(json!({}))),
                BAD_ALG,
            ),
            (
                sign(&k, json!({ "alg": "HS256", "kid": "a" }), claims(json!({}))),
                BAD_ALG,
            ),
            (
                sign(&k, json!({ "alg": "RS256", "kid": "a" }), claims(json!({}))),
                KEY_MISMATCH,
            ),
            (sign(&key(), hdr.clone(), claims(json!({}))), BAD_SIG),
            (
                sign(&k, json!({ "alg": "EdDSA" }), claims(json!({}))),
                NO_KID,
            ),
            (
                sign(&k, json!({ "alg": "EdDSA", "kid": "b" }), claims(json!({}))),
                UNKNOWN_KID,
            ),
            ("not.a.jwt".to_owned(), MALFORMED),
        ];
        for (token, why) in cases {
            assert_eq!(v.verify(token.as_bytes()), Err(why), "{token}");
        }
        // The unknown kid is what the proxy waits for; a known one is not.
        let unknown = sign(&k, json!({ "alg": "EdDSA", "kid": "b" }), claims(json!({})));
        assert!(v.missing_key(unknown.as_bytes()).is_some());
        assert!(v.missing_key(ok.as_bytes()).is_none());
        // A JWKS without usable keys keeps the old ones.
        assert!(
            set.load(br#"{"keys":[{"kty":"oct","kid":"h","k":"c2VjcmV0"}]}"#)
                .is_err()
        );
        assert_eq!(v.verify(ok.as_bytes()), Ok((0, 0)));
    }

    #[test]
    fn config_errors_name_the_field() {
        let errs = compile_errors(json!({
            "auth": { "jwt": [{ "name": "idp", "issuer": "", "jwks_url": "ftp://x/k", "audiences": [] }] },
            "consumers": [{ "name": "svc", "identify": { "jwt": { "issuer": "nope", "value": "v" } } }]
        }));
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "auth.jwt[0].issuer",
                "auth.jwt[0].jwks_url",
                "auth.jwt[0].audiences",
                "consumers[0].identify.jwt.issuer"
            ]
        );
    }
}
