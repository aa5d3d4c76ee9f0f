//! Path patterns for allow rules, and the request-path normalisation that runs
//! before any path is matched or forwarded.
//!
//! A pattern is `/`-separated segments: a literal (compared byte for byte,
//! case-sensitive, percent-encoding left as written), `*` (exactly one
//! non-empty segment), `{name}` (the same, named) or `**` (zero or more
//! segments, anywhere). Patterns are compiled once; matching walks the request
//! path in place and never allocates.
//!
//! Why normalise: `GET /repos/../admin` must not slip past a `/repos/**` rule
//! and then reach `/admin` on an upstream that resolves dot segments. So the
//! request path is normalised first (RFC 3986 dot-segment removal, empty
//! segments collapsed) and the *normalised* path is both matched and sent
//! upstream: what was checked is what is forwarded. Following the WHATWG URL
//! standard, `%2e` (any case) counts as `.` when it makes up a dot segment
//! (`%2e%2e`, `.%2e`, `%2e.`), because servers that decode before resolving
//! dot segments would otherwise see a `..` that the policy never saw. All other
//! percent-encoding (including `%2f`) is left untouched and compared literally.

use std::borrow::Cow;

/// One compiled pattern segment.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    /// Must equal this segment exactly.
    Lit(Box<str>),
    /// `*` or `{name}`: exactly one non-empty segment.
    One,
    /// `**`: zero or more segments.
    Any,
}

/// A compiled path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PathPattern {
    segs: Box<[Seg]>,
}

impl PathPattern {
    /// Compiles a pattern; the error says what is wrong (the caller adds the key path).
    pub(crate) fn parse(src: &str) -> Result<Self, String> {
        if src.is_empty() {
            return Err("path pattern is empty".to_owned());
        }
        let Some(body) = src.strip_prefix('/') else {
            return Err(format!("path pattern {src:?} must start with '/'"));
        };
        if src.contains(['?', '#']) {
            return Err(format!("path pattern {src:?} must not contain '?' or '#'"));
        }
        // A trailing slash is ignored: request paths are matched without theirs.
        let body = body.strip_suffix('/').unwrap_or(body);
        let mut segs: Vec<Seg> = Vec::new();
        let mut names: Vec<&str> = Vec::new();
        if body.is_empty() {
            return Ok(Self { segs: Box::new([]) });
        }
        for seg in body.split('/') {
            let compiled = match seg {
                "" => return Err(format!("path pattern {src:?} has an empty segment ('//')")),
                "." | ".." => {
                    return Err(format!(
                        "path pattern {src:?} has a dot segment, which never matches a normalised path"
                    ));
                }
                "*" => Seg::One,
                "**" => Seg::Any,
                s if s.contains('*') => {
                    return Err(format!(
                        "path pattern {src:?}: segment {s:?} mixes '*' with other characters; \
                         use '*' or '**' as a whole segment"
                    ));
                }
                s if s.contains(['{', '}']) => {
                    let name = s
                        .strip_prefix('{')
                        .and_then(|r| r.strip_suffix('}'))
                        .filter(|n| is_identifier(n))
                        .ok_or_else(|| {
                            format!(
                                "path pattern {src:?}: segment {s:?} must be a whole {{name}} with a name \
                                 made of letters, digits and '_' (not starting with a digit)"
                            )
                        })?;
                    if names.contains(&name) {
                        return Err(format!(
                            "path pattern {src:?}: parameter {{{name}}} appears twice"
                        ));
                    }
                    names.push(name);
                    Seg::One
                }
                s => Seg::Lit(s.into()),
            };
            // `**/**` means the same as `**`; keeping one keeps matching linear.
            if compiled == Seg::Any && segs.last() == Some(&Seg::Any) {
                continue;
            }
            segs.push(compiled);
        }
        Ok(Self {
            segs: segs.into_boxed_slice(),
        })
    }

    /// Whether a normalised path (see [`normalize_path`]) matches. A trailing
    /// slash on the path is ignored.
    ///
    /// This is the classic wildcard algorithm over segments: on a mismatch it
    /// backtracks only to the most recent `**`, letting it absorb one more
    /// segment, which is O(path × pattern) at worst and allocation-free.
    pub(crate) fn matches(&self, path: &str) -> bool {
        let s = path.strip_prefix('/').unwrap_or(path);
        let s = s.strip_suffix('/').unwrap_or(s);
        let segs = &self.segs;
        let mut pi = 0;
        let mut pos = if s.is_empty() { None } else { Some(0) };
        // (pattern index after the `**`, path position the `**` has absorbed up to)
        let mut star: Option<(usize, usize)> = None;
        while let Some(p) = pos {
            let (seg, next) = next_segment(s, p);
            let advanced = match segs.get(pi) {
                Some(Seg::Any) => {
                    star = Some((pi + 1, p));
                    pi += 1;
                    continue;
                }
                Some(Seg::One) => !seg.is_empty(),
                Some(Seg::Lit(lit)) => **lit == *seg,
                None => false,
            };
            if advanced {
                pi += 1;
                pos = next;
            } else if let Some((star_pi, star_pos)) = star {
                // Let the last `**` swallow one more segment and retry from there.
                let (_, after) = next_segment(s, star_pos);
                star = after.map(|a| (star_pi, a));
                pi = star_pi;
                pos = after;
                if after.is_none() {
                    break;
                }
            } else {
                return false;
            }
        }
        segs.get(pi..)
            .is_some_and(|rest| rest.iter().all(|s| *s == Seg::Any))
    }
}

/// The segment starting at byte `p` of `s` and where the next one starts.
fn next_segment(s: &str, p: usize) -> (&str, Option<usize>) {
    let rest = s.get(p..).unwrap_or("");
    match rest.find('/') {
        Some(i) => (&rest[..i], Some(p + i + 1)),
        None => (rest, None),
    }
}

fn is_identifier(n: &str) -> bool {
    let mut chars = n.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_dot(seg: &str) -> bool {
    seg == "." || seg.eq_ignore_ascii_case("%2e")
}

fn is_dot_dot(seg: &str) -> bool {
    seg == ".."
        || seg.eq_ignore_ascii_case(".%2e")
        || seg.eq_ignore_ascii_case("%2e.")
        || seg.eq_ignore_ascii_case("%2e%2e")
}

/// Normalises a request path: removes `.` and `..` segments (RFC 3986 §5.2.4,
/// `..` never climbing above the root, with the WHATWG `%2e` forms), collapses
/// empty segments (`//`), and keeps one trailing slash if the path had one.
/// Returns `None` when the path does not start with `/`. Borrows when the path
/// is already normal, which is the common case.
pub(crate) fn normalize_path(path: &str) -> Option<Cow<'_, str>> {
    let body = path.strip_prefix('/')?;
    // An empty segment anywhere but at the end means `//`.
    let needs_work = body.starts_with('/')
        || body.contains("//")
        || body.split('/').any(|seg| is_dot(seg) || is_dot_dot(seg));
    if !needs_work {
        return Some(Cow::Borrowed(path));
    }
    let mut kept: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for seg in body.split('/') {
        // A path that ends in a dot segment or an empty one names a directory.
        trailing_slash = true;
        if seg.is_empty() || is_dot(seg) {
            continue;
        }
        if is_dot_dot(seg) {
            kept.pop();
            continue;
        }
        kept.push(seg);
        trailing_slash = false;
    }
    let mut out = String::with_capacity(path.len());
    for seg in &kept {
        out.push('/');
        out.push_str(seg);
    }
    if trailing_slash || kept.is_empty() {
        out.push('/');
    }
    Some(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_paths() {
        let cases = [
            ("/", "/"),
            ("/repos/x", "/repos/x"),
            ("/repos/x/", "/repos/x/"),
            ("//repos", "/repos"),
            ("/repos//x", "/repos/x"),
            ("/repos/./x", "/repos/x"),
            ("/repos/../admin", "/admin"),
            ("/../../admin", "/admin"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/..", "/"),
            ("/repos/%2e%2e/admin", "/admin"),
            ("/repos/%2E./admin", "/admin"),
            ("/repos/.%2e/admin", "/admin"),
            ("/repos/%2e/x", "/repos/x"),
            // Percent-encoding that is not a whole dot segment stays literal.
            ("/repos/%2e%2ex/y", "/repos/%2e%2ex/y"),
            ("/repos/..%2fadmin", "/repos/..%2fadmin"),
            ("/a%2Fb", "/a%2Fb"),
            ("/...", "/..."),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_path(input).as_deref(), Some(want), "{input}");
        }
        assert!(matches!(normalize_path("/repos/x"), Some(Cow::Borrowed(_))));
        assert_eq!(normalize_path("repos"), None);
        assert_eq!(normalize_path(""), None);
    }

    fn m(pattern: &str, path: &str) -> bool {
        let p = PathPattern::parse(pattern).unwrap();
        p.matches(&normalize_path(path).unwrap())
    }

    #[test]
    fn matches_patterns() {
        let cases = [
            ("/", "/", true),
            ("/", "/a", false),
            ("/repos", "/repos", true),
            ("/repos", "/repos/", true),
            ("/repos", "/Repos", false),
            ("/repos", "/repos/x", false),
            ("/repos/*", "/repos/x", true),
            ("/repos/*", "/repos", false),
            ("/repos/*", "/repos/", false),
            ("/repos/*", "/repos/x/y", false),
            ("/repos/{owner}/{repo}", "/repos/a/b", true),
            ("/repos/{owner}/{repo}", "/repos/a", false),
            ("/repos/**", "/repos", true),
            ("/repos/**", "/repos/a/b/c", true),
            ("/repos/**", "/reposx/a", false),
            ("/**", "/", true),
            ("/**", "/anything/at/all", true),
            ("/**/issues", "/issues", true),
            ("/**/issues", "/a/b/issues", true),
            ("/**/issues", "/a/b/issues/1", false),
            ("/a/**/b/*/c", "/a/x/b/y/b/z/c", true),
            ("/a/**/b/*/c", "/a/b/y/c", true),
            ("/a/**/b/*/c", "/a/b/c", false),
            ("/a/**/z/**", "/a/1/2/z", true),
            ("/a/**/z/**", "/a/1/2/y", false),
            ("/users/{id}/keys", "/users/42/keys", true),
            ("/users/{id}/keys", "/users/42/43/keys", false),
            // Bypass attempts are normalised before matching.
            ("/repos/**", "/repos/../admin", false),
            ("/admin", "/repos/../admin", true),
            ("/repos/*", "//repos//x", true),
            ("/repos/**", "/repos/%2e%2e/admin", false),
            ("/repos/*/x", "/repos/%2e%2ex/x", true),
            ("/a%2Fb", "/a%2Fb", true),
            ("/a%2Fb", "/a%2fb", false),
        ];
        for (pattern, path, want) in cases {
            assert_eq!(m(pattern, path), want, "{pattern} vs {path}");
        }
    }

    /// The obvious recursive definition, to check the linear matcher against.
    fn naive(pattern: &[&str], path: &[&str]) -> bool {
        match (pattern.split_first(), path.split_first()) {
            (None, None) => true,
            (Some((&"**", rest)), _) => {
                naive(rest, path) || (!path.is_empty() && naive(pattern, &path[1..]))
            }
            (Some((p, rest)), Some((s, tail))) => (*p == "*" || p == s) && naive(rest, tail),
            _ => false,
        }
    }

    fn all_sequences<'a>(alphabet: &[&'a str], max_len: usize) -> Vec<Vec<&'a str>> {
        let mut out = vec![vec![]];
        let mut frontier: Vec<Vec<&str>> = vec![vec![]];
        for _ in 0..max_len {
            frontier = frontier
                .iter()
                .flat_map(|seq| {
                    alphabet
                        .iter()
                        .map(move |t| [seq.as_slice(), &[*t]].concat())
                })
                .collect();
            out.extend(frontier.iter().cloned());
        }
        out
    }

    #[test]
    fn agrees_with_the_naive_definition() {
        let patterns = all_sequences(&["a", "b", "*", "**"], 4);
        let paths = all_sequences(&["a", "b"], 5);
        for pattern in &patterns {
            let compiled = PathPattern::parse(&format!("/{}", pattern.join("/"))).unwrap();
            for path in &paths {
                let text = format!("/{}", path.join("/"));
                assert_eq!(
                    compiled.matches(&text),
                    naive(pattern, path),
                    "{pattern:?} vs {text}"
                );
            }
        }
    }

    #[test]
    fn many_double_stars_stay_fast() {
        // Worst case for naive backtracking; the linear algorithm just says no.
        let pattern = PathPattern::parse("/**/a/**/a/**/a/**/b").unwrap();
        let path = "/a".repeat(2000);
        assert!(!pattern.matches(&path));
    }

    #[test]
    fn rejects_invalid_patterns() {
        for bad in [
            "",
            "repos",
            "/**a",
            "/a*b",
            "/a*",
            "/{}",
            "/{x",
            "/x}",
            "/{1x}",
            "/{a-b}",
            "/a//b",
            "/a/./b",
            "/a/../b",
            "/{id}/{id}",
            "/a?b",
        ] {
            assert!(
                PathPattern::parse(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
        for good in ["/", "/a/", "/**", "/{_id}/{id2}", "/v1/*/x/**", "/%2e"] {
            assert!(
                PathPattern::parse(good).is_ok(),
                "{good:?} should be accepted"
            );
        }
    }
}
