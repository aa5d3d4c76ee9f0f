//! Escaping, the page shell (header, navigation, user menu) and small components (pills,
//! cards, stats, empty states) plus the formatting helpers pages share.

use std::fmt::{self, Write as _};

/// HTML-escapes text for element content and quoted attribute values.
pub struct Esc<'a>(pub &'a str);

impl fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut last = 0;
        for (i, b) in self.0.bytes().enumerate() {
            let rep = match b {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                b'\'' => "&#39;",
                _ => continue,
            };
            f.write_str(&self.0[last..i])?;
            f.write_str(rep)?;
            last = i + 1;
        }
        f.write_str(&self.0[last..])
    }
}

/// Escapes `s` for HTML (content or a quoted attribute).
pub fn esc(s: &str) -> Esc<'_> {
    Esc(s)
}

/// Percent-encodes `s` for one URL path segment or query value (then still HTML-escape-free:
/// the output only contains unreserved characters and `%XX`).
pub struct Url<'a>(pub &'a str);

impl fmt::Display for Url<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                f.write_char(b as char)?;
            } else {
                write!(f, "%{b:02X}")?;
            }
        }
        Ok(())
    }
}

/// Percent-encodes `s` for a URL path segment or query value.
pub fn url(s: &str) -> Url<'_> {
    Url(s)
}

/// One navigation entry.
pub struct NavItem<'a> {
    pub key: &'a str,
    pub href: &'a str,
    pub label: &'a str,
}

/// The signed-in user shown in the header, with a logout form.
pub struct User<'a> {
    pub name: &'a str,
    /// e.g. `admin`, `viewer · acme`.
    pub role: &'a str,
    pub csrf: &'a str,
    /// The logout form's action.
    pub logout: &'a str,
}

/// The frame around every page.
pub struct Shell<'a> {
    /// "Control plane" or "Gateway".
    pub product: &'a str,
    /// Where the assets are served (`<assets>/ui.css` …).
    pub assets: &'a str,
    /// The brand link's target.
    pub home: &'a str,
    pub nav: &'a [NavItem<'a>],
    /// The `key` of the current page's nav entry.
    pub active: &'a str,
    pub user: Option<User<'a>>,
}

fn head(out: &mut String, title: &str, assets: &str) {
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · Tollgate</title>\
         <link rel=\"icon\" href=\"{a}/logo.svg\" type=\"image/svg+xml\">\
         <link rel=\"stylesheet\" href=\"{a}/ui.css\">\
         <script src=\"{a}/ui.js\" defer></script></head>",
        esc(title),
        a = esc(assets),
    );
}

/// A full page: header with brand, navigation and user menu, then `body` (trusted markup
/// built by the caller with everything escaped).
pub fn page(shell: &Shell<'_>, title: &str, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 4096);
    head(&mut out, title, shell.assets);
    let _ = write!(
        out,
        "<body><header class=\"top\"><a class=\"brand\" href=\"{home}\">\
         <img src=\"{a}/logo.svg\" alt=\"\" width=\"28\" height=\"28\"><span>Tollgate</span>\
         <small>{product}</small></a><nav>",
        home = esc(shell.home),
        a = esc(shell.assets),
        product = esc(shell.product),
    );
    for item in shell.nav {
        let cls = if item.key == shell.active {
            " class=\"active\" aria-current=\"page\""
        } else {
            ""
        };
        let _ = write!(
            out,
            "<a href=\"{}\"{cls} data-nav=\"{}\">{}</a>",
            esc(item.href),
            esc(item.key),
            esc(item.label)
        );
    }
    out.push_str("</nav>");
    if let Some(u) = &shell.user {
        let _ = write!(
            out,
            "<div class=\"user\"><span class=\"who\" id=\"user-name\">{}</span>\
             <span class=\"role\" id=\"user-role\">{}</span>\
             <form method=\"post\" action=\"{}\">{}<button class=\"btn ghost small\" id=\"logout\">Sign out</button></form></div>",
            esc(u.name),
            esc(u.role),
            esc(u.logout),
            csrf_field(u.csrf),
        );
    }
    let _ = write!(
        out,
        "</header><main><h1>{}</h1>{body}</main>\
         <footer>Tollgate · server-rendered, no external resources</footer></body></html>",
        esc(title)
    );
    out
}

/// A page without navigation (sign-in, errors).
pub fn bare_page(title: &str, assets: &str, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 1024);
    head(&mut out, title, assets);
    let _ = write!(
        out,
        "<body class=\"bare\"><main class=\"narrow\"><div class=\"brand big\">\
         <img src=\"{a}/logo.svg\" alt=\"\" width=\"40\" height=\"40\"><span>Tollgate</span></div>\
         {body}</main></body></html>",
        a = esc(assets)
    );
    out
}

/// The hidden CSRF field every POST form carries.
pub fn csrf_field(token: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(token)
    )
}

/// The colour of a status pill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    Ok,
    Warn,
    Bad,
    Info,
    Muted,
}

impl Tone {
    fn class(self) -> &'static str {
        match self {
            Tone::Ok => "ok",
            Tone::Warn => "warn",
            Tone::Bad => "bad",
            Tone::Info => "info",
            Tone::Muted => "muted",
        }
    }
}

/// A status pill.
pub fn pill(tone: Tone, text: &str) -> String {
    format!("<span class=\"pill {}\">{}</span>", tone.class(), esc(text))
}

/// A card with a title (escaped) around trusted markup.
pub fn card(title: &str, body: &str) -> String {
    format!(
        "<section class=\"card\"><h2>{}</h2>{body}</section>",
        esc(title)
    )
}

/// A card with an id (for tests and deep links).
pub fn card_id(id: &str, title: &str, body: &str) -> String {
    format!(
        "<section class=\"card\" id=\"{}\"><h2>{}</h2>{body}</section>",
        esc(id),
        esc(title)
    )
}

/// One big number with a label and an optional sub-line.
pub fn stat(label: &str, value: &str, sub: &str) -> String {
    format!(
        "<div class=\"stat\"><div class=\"label\">{}</div><div class=\"value\">{}</div><div class=\"sub\">{}</div></div>",
        esc(label),
        esc(value),
        esc(sub)
    )
}

/// A row of stats.
pub fn stats(items: &[String]) -> String {
    format!("<div class=\"stats\">{}</div>", items.concat())
}

/// An empty state: what is missing and how to get it.
pub fn empty(title: &str, hint: &str) -> String {
    format!(
        "<div class=\"empty\"><svg viewBox=\"0 0 24 24\" width=\"32\" height=\"32\" aria-hidden=\"true\"><path d=\"M3 12h4l3 8 4-16 3 8h4\" fill=\"none\" stroke=\"currentColor\" stroke-width=\"1.6\"/></svg>\
         <div class=\"title\">{}</div><div class=\"hint\">{}</div></div>",
        esc(title),
        esc(hint)
    )
}

/// A flash message.
pub fn notice(tone: Tone, text: &str) -> String {
    format!(
        "<div class=\"notice {}\" role=\"status\">{}</div>",
        tone.class(),
        esc(text)
    )
}

/// `1234` → `1.2k`, `5_600_000` → `5.6M`.
pub fn fmt_count(n: u64) -> String {
    match n {
        0..=9_999 => n.to_string(),
        10_000..=999_999 => format!("{:.1}k", n as f64 / 1e3),
        1_000_000..=999_999_999 => format!("{:.1}M", n as f64 / 1e6),
        _ => format!("{:.1}G", n as f64 / 1e9),
    }
}

/// A number for an axis or a cell: integers plainly, small values with up to 2 decimals.
pub fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    if v.abs() >= 10_000.0 {
        return fmt_count(v.round().max(0.0) as u64);
    }
    if (v - v.round()).abs() < 1e-9 {
        return format!("{}", v.round() as i64);
    }
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Milliseconds, e.g. `12.5 ms`, `1.20 s`.
pub fn fmt_ms(ms: f64) -> String {
    if !ms.is_finite() {
        "–".into()
    } else if ms == 0.0 {
        "0 ms".into()
    } else if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else if ms >= 10.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

/// Bytes, e.g. `1.5 MiB`.
pub fn fmt_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// How long ago `then` was (both unix seconds), e.g. `12 s ago`, `3 h ago`, `never` for 0.
pub fn fmt_ago(now: u64, then: u64) -> String {
    if then == 0 {
        return "never".into();
    }
    let d = now.saturating_sub(then);
    match d {
        0..=59 => format!("{d} s ago"),
        60..=3599 => format!("{} min ago", d / 60),
        3600..=86_399 => format!("{} h ago", d / 3600),
        _ => format!("{} d ago", d / 86_400),
    }
}

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Unix seconds as `2026-12-01 16:45:03 UTC`.
pub fn fmt_time(unix: u64) -> String {
    if unix == 0 {
        return "–".into();
    }
    let (y, m, d) = civil((unix / 86_400) as i64);
    let s = unix % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// Unix seconds as `16:45` (chart axes).
pub fn fmt_hm(unix: u64) -> String {
    let s = unix % 86_400;
    format!("{:02}:{:02}", s / 3600, s / 60 % 60)
}

/// Parses an `application/x-www-form-urlencoded` body.
pub fn form_decode(body: &str) -> Vec<(String, String)> {
    body.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (pct_decode(k), pct_decode(v))
        })
        .collect()
}

/// The first value of `name` in a decoded form.
pub fn form_get<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn hexval(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes `+` and `%XX`; invalid escapes are kept as they are.
pub fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hexval(b[i + 1]), hexval(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>").to_string(),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(esc("plain").to_string(), "plain");
        assert_eq!(url("a b/c?d=é").to_string(), "a%20b%2Fc%3Fd%3D%C3%A9");
    }

    #[test]
    fn page_escapes_everything_it_is_given() {
        let shell = Shell {
            product: "<p>",
            assets: "/ui/assets",
            home: "/ui/",
            nav: &[NavItem {
                key: "fleet",
                href: "/ui/fleet",
                label: "<b>Fleet</b>",
            }],
            active: "fleet",
            user: Some(User {
                name: "<script>",
                role: "admin",
                csrf: "\"x",
                logout: "/ui/logout",
            }),
        };
        let html = page(&shell, "T<i>", "<p>trusted</p>");
        assert!(!html.contains("<script>"));
        assert!(!html.contains("<b>Fleet"));
        assert!(html.contains("&lt;script&gt;"));
        assert!(html.contains("value=\"&quot;x\""));
        assert!(html.contains("<p>trusted</p>"));
        assert!(html.contains("class=\"active\""));
    }

    #[test]
    fn formats() {
        assert_eq!(fmt_count(999), "999");
        assert_eq!(fmt_count(12_345), "12.3k");
        assert_eq!(fmt_num(2.5), "2.5");
        assert_eq!(fmt_num(3.0), "3");
        assert_eq!(fmt_time(0), "–");
        assert_eq!(fmt_time(1_796_143_503), "2026-12-01 16:45:03 UTC");
        assert_eq!(fmt_ago(100, 40), "60 s ago".replace("60 s", "1 min"));
        assert_eq!(fmt_bytes(1536), "1.5 KiB");
    }

    #[test]
    fn decodes_forms() {
        let f = form_decode("token=a%2Bb+c&csrf=x%zz&empty=");
        assert_eq!(form_get(&f, "token"), Some("a+b c"));
        assert_eq!(form_get(&f, "csrf"), Some("x%zz"));
        assert_eq!(form_get(&f, "empty"), Some(""));
        assert_eq!(form_get(&f, "none"), None);
        assert_eq!(pct_decode("%"), "%");
        assert_eq!(pct_decode("%4"), "%4");
    }
}
