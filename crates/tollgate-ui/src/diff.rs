//! A line diff (longest common subsequence over the lines that differ after trimming the
//! common prefix and suffix) and its rendering as a unified-diff table with folded context.

use std::fmt::Write as _;

use crate::html::esc;

/// What happened to a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Same,
    Add,
    Del,
}

/// One line of a diff with its 1-based line numbers in the old and new text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line<'a> {
    pub op: Op,
    pub old: Option<usize>,
    pub new: Option<usize>,
    pub text: &'a str,
}

/// Above this many cells the LCS table is not built: the middle is shown as removed + added.
const MAX_CELLS: usize = 4_000_000;

/// The line diff of `a` (old) → `b` (new).
pub fn diff_lines<'a>(a: &'a str, b: &'a str) -> Vec<Line<'a>> {
    let a: Vec<&str> = a.lines().collect();
    let b: Vec<&str> = b.lines().collect();
    let mut pre = 0;
    while pre < a.len() && pre < b.len() && a[pre] == b[pre] {
        pre += 1;
    }
    let mut suf = 0;
    while suf < a.len() - pre && suf < b.len() - pre && a[a.len() - 1 - suf] == b[b.len() - 1 - suf]
    {
        suf += 1;
    }
    let am = &a[pre..a.len() - suf];
    let bm = &b[pre..b.len() - suf];
    let mut out = Vec::with_capacity(a.len().max(b.len()) + 8);
    for (i, t) in a[..pre].iter().enumerate() {
        out.push(Line {
            op: Op::Same,
            old: Some(i + 1),
            new: Some(i + 1),
            text: t,
        });
    }
    let (n, m) = (am.len(), bm.len());
    let mut oi = pre;
    let mut ni = pre;
    let push = |out: &mut Vec<Line<'a>>, op: Op, oi: &mut usize, ni: &mut usize, text: &'a str| {
        let (o, nw) = match op {
            Op::Same => {
                *oi += 1;
                *ni += 1;
                (Some(*oi), Some(*ni))
            }
            Op::Del => {
                *oi += 1;
                (Some(*oi), None)
            }
            Op::Add => {
                *ni += 1;
                (None, Some(*ni))
            }
        };
        out.push(Line {
            op,
            old: o,
            new: nw,
            text,
        });
    };
    if n.saturating_mul(m) > MAX_CELLS {
        for t in am {
            push(&mut out, Op::Del, &mut oi, &mut ni, t);
        }
        for t in bm {
            push(&mut out, Op::Add, &mut oi, &mut ni, t);
        }
    } else {
        // lcs[i][j] = LCS length of am[i..] and bm[j..].
        let w = m + 1;
        let mut lcs = vec![0u32; (n + 1) * w];
        for i in (0..n).rev() {
            for j in (0..m).rev() {
                lcs[i * w + j] = if am[i] == bm[j] {
                    lcs[(i + 1) * w + j + 1] + 1
                } else {
                    lcs[(i + 1) * w + j].max(lcs[i * w + j + 1])
                };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < n || j < m {
            if i < n && j < m && am[i] == bm[j] {
                push(&mut out, Op::Same, &mut oi, &mut ni, am[i]);
                i += 1;
                j += 1;
            } else if j < m && (i == n || lcs[i * w + j + 1] >= lcs[(i + 1) * w + j]) {
                // Removals before additions at the same point read better: prefer Del on ties.
                if i < n && lcs[(i + 1) * w + j] == lcs[i * w + j + 1] {
                    push(&mut out, Op::Del, &mut oi, &mut ni, am[i]);
                    i += 1;
                } else {
                    push(&mut out, Op::Add, &mut oi, &mut ni, bm[j]);
                    j += 1;
                }
            } else {
                push(&mut out, Op::Del, &mut oi, &mut ni, am[i]);
                i += 1;
            }
        }
    }
    for t in &a[a.len() - suf..] {
        push(&mut out, Op::Same, &mut oi, &mut ni, t);
    }
    out
}

/// `(added, removed)` line counts.
pub fn stats(lines: &[Line<'_>]) -> (usize, usize) {
    lines.iter().fold((0, 0), |(a, d), l| match l.op {
        Op::Add => (a + 1, d),
        Op::Del => (a, d + 1),
        Op::Same => (a, d),
    })
}

/// A unified-diff table: changed lines with `context` unchanged lines around them; longer
/// unchanged runs are folded into one "n unchanged lines" row.
pub fn render(lines: &[Line<'_>], context: usize) -> String {
    let mut keep = vec![false; lines.len()];
    for (i, l) in lines.iter().enumerate() {
        if l.op != Op::Same {
            let lo = i.saturating_sub(context);
            let hi = (i + context + 1).min(lines.len());
            keep[lo..hi].iter_mut().for_each(|k| *k = true);
        }
    }
    let mut out = String::with_capacity(lines.len() * 80 + 128);
    out.push_str("<table class=\"diff\"><tbody>");
    let mut i = 0;
    while i < lines.len() {
        if !keep[i] {
            let start = i;
            while i < lines.len() && !keep[i] {
                i += 1;
            }
            let _ = write!(
                out,
                "<tr class=\"fold\"><td colspan=\"4\">⋯ {} unchanged line{}</td></tr>",
                i - start,
                if i - start == 1 { "" } else { "s" }
            );
            continue;
        }
        let l = &lines[i];
        let (cls, sign) = match l.op {
            Op::Same => ("same", " "),
            Op::Add => ("add", "+"),
            Op::Del => ("del", "−"),
        };
        let num = |n: Option<usize>| n.map(|n| n.to_string()).unwrap_or_default();
        let _ = write!(
            out,
            "<tr class=\"{cls}\"><td class=\"ln\">{}</td><td class=\"ln\">{}</td><td class=\"sign\">{sign}</td><td class=\"code\">{}</td></tr>",
            num(l.old),
            num(l.new),
            esc(l.text)
        );
        i += 1;
    }
    out.push_str("</tbody></table>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(a: &str, b: &str) -> String {
        diff_lines(a, b)
            .iter()
            .map(|l| match l.op {
                Op::Same => format!(" {}", l.text),
                Op::Add => format!("+{}", l.text),
                Op::Del => format!("-{}", l.text),
            })
            .collect::<Vec<_>>()
            .join("|")
    }

    #[test]
    fn diffs_lines() {
        assert_eq!(ops("a\nb\nc", "a\nb\nc"), " a| b| c");
        assert_eq!(ops("a\nb\nc", "a\nx\nc"), " a|-b|+x| c");
        assert_eq!(ops("a\nc", "a\nb\nc"), " a|+b| c");
        assert_eq!(ops("a\nb\nc", "a\nc"), " a|-b| c");
        assert_eq!(ops("", "x"), "+x");
        assert_eq!(ops("x\ny", ""), "-x|-y");
        assert_eq!(ops("a\nb\nc\nd", "b\nc\nd\ne"), "-a| b| c| d|+e");
    }

    #[test]
    fn line_numbers_follow_both_sides() {
        let d = diff_lines("a\nb\nc", "a\nx\ny\nc");
        let c = d.last().cloned();
        assert_eq!(c.map(|l| (l.old, l.new)), Some((Some(3), Some(4))));
        assert_eq!(stats(&d), (2, 1));
    }

    #[test]
    fn render_folds_context_and_escapes() {
        let old: String = (0..20).map(|i| format!("line{i}\n")).collect();
        let new = old.replace("line10", "<b>ten</b>");
        let html = render(&diff_lines(&old, &new), 2);
        assert!(html.contains("⋯ 8 unchanged lines"));
        assert!(html.contains("⋯ 7 unchanged lines"));
        assert!(html.contains("&lt;b&gt;ten&lt;/b&gt;"));
        assert_eq!(html.matches("class=\"add\"").count(), 1);
        assert_eq!(html.matches("class=\"del\"").count(), 1);
    }
}
