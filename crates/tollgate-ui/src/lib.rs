//! Web UI building blocks shared by the control-plane dashboard (`/ui/` on the control plane)
//! and the gateway's local one-gateway view (`/ui` on the admin listener), so both look alike.
//!
//! Everything is server-rendered HTML built from strings: every piece of data goes through
//! [`html::esc`] (or [`html::url`] inside URLs) on its way into markup. Charts are inline SVG
//! rendered here ([`chart`]), so pages work without JavaScript. The stylesheet, a little vanilla
//! JS and the logo are embedded with `include_str!` ([`asset`]) — no build step, no CDN — and
//! served under a strict Content-Security-Policy ([`SECURITY_HEADERS`]) that forbids inline
//! scripts and styles. Sessions are HMAC-signed cookies ([`session`]); the raw operator token
//! never appears in a cookie.

pub mod chart;
pub mod diff;
pub mod html;
pub mod session;

/// The embedded stylesheet.
pub const CSS: &str = include_str!("assets/ui.css");
/// The embedded script (progressive enhancement only: pages work without it).
pub const JS: &str = include_str!("assets/ui.js");
/// The logo.
pub const LOGO_SVG: &str = include_str!("assets/logo.svg");

/// An embedded asset by file name: `(content type, body)`.
pub fn asset(name: &str) -> Option<(&'static str, &'static str)> {
    match name {
        "ui.css" => Some(("text/css; charset=utf-8", CSS)),
        "ui.js" => Some(("text/javascript; charset=utf-8", JS)),
        "logo.svg" => Some(("image/svg+xml", LOGO_SVG)),
        _ => None,
    }
}

/// Headers every HTML page is served with: no inline script or style can run (so an escaping
/// mistake cannot become script execution), no framing, no referrer leaks, never cached.
pub const SECURITY_HEADERS: &[(&str, &str)] = &[
    (
        "content-security-policy",
        "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; \
         form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "same-origin"),
    ("cache-control", "no-store"),
];
