//! Where each key of a configuration was written.
//!
//! The map is built by walking the YAML parser's events (the same `granit`
//! parser serde-saphyr uses), independently of deserialisation, so that
//! validation errors found later on the typed [`crate::Config`] can still be
//! reported at a line and column. The same walk finds duplicate keys (all of
//! them, not only the first) and records the document's outline, which the
//! loader uses to re-check sections separately and report more than one
//! deserialisation error per file.

use std::collections::{HashMap, HashSet};

use serde_saphyr::granit_parser::{Event, Parser, Span, StructureStyle};

use crate::error::ConfigError;

/// A position in one of the map's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Pos {
    file: u32,
    line: u32,
    column: u32,
}

/// Maps dotted key paths (`apis[0].allow[1].paths[0]`, `listen.proxy`) to the
/// file, line and column where they are written.
#[derive(Debug, Clone, Default)]
pub struct SourceMap {
    files: Vec<String>,
    /// Where each path is written: the key of a mapping entry, or the start of
    /// a sequence item. The root path `""` is the document start.
    keys: HashMap<String, Pos>,
    /// Every key and value start with the path it belongs to, used to turn a
    /// parser location back into a path.
    marks: Vec<(Pos, String, MarkKind)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MarkKind {
    Key,
    Value,
}

impl SourceMap {
    /// A map that knows only the file name; every lookup falls back to line 1, column 1.
    pub fn empty(file: impl Into<String>) -> Self {
        Self {
            files: vec![file.into()],
            keys: HashMap::new(),
            marks: Vec::new(),
        }
    }

    /// The file names this map covers, in load order.
    pub fn files(&self) -> &[String] {
        &self.files
    }

    /// File, line and column where `path` is written, if it is.
    pub fn position(&self, path: &str) -> Option<(&str, u32, u32)> {
        let p = self.keys.get(path)?;
        Some((self.file_name(p.file), p.line, p.column))
    }

    /// Builds an error for `path`, located at that key or, when the key is
    /// not written (a default, or a path the map does not know), at the
    /// nearest written ancestor, else at line 1, column 1 of the first file.
    pub fn locate(&self, path: &str, message: impl Into<String>) -> ConfigError {
        let mut cur = path;
        let pos = loop {
            if let Some(p) = self.keys.get(cur) {
                break Some(*p);
            }
            if cur.is_empty() {
                break None;
            }
            cur = parent_path(cur);
        };
        let pos = pos.unwrap_or(Pos {
            file: 0,
            line: 1,
            column: 1,
        });
        ConfigError {
            file: self.file_name(pos.file).to_owned(),
            line: pos.line,
            column: pos.column,
            path: path.to_owned(),
            message: message.into(),
        }
    }

    fn file_name(&self, idx: u32) -> &str {
        self.files
            .get(idx as usize)
            .map(String::as_str)
            .unwrap_or("<config>")
    }

    /// The path a parser location belongs to. `prefer_key` picks, among paths
    /// starting at that exact place, the key whose last segment is that name
    /// (for "unknown field `x`"); otherwise the outermost path wins, because
    /// a mapping value starts where its first key does and errors about the
    /// value concern the container. Without an exact match, the nearest mark
    /// before the location is used.
    pub(crate) fn path_at(
        &self,
        file: u32,
        line: u32,
        column: u32,
        prefer_key: Option<&str>,
    ) -> String {
        let at = Pos { file, line, column };
        let exact: Vec<&(Pos, String, MarkKind)> =
            self.marks.iter().filter(|m| m.0 == at).collect();
        if let Some(name) = prefer_key {
            let hit = exact
                .iter()
                .find(|m| m.2 == MarkKind::Key && last_segment(&m.1) == name);
            if let Some(m) = hit {
                return m.1.clone();
            }
        }
        if let Some(m) = exact.iter().min_by_key(|m| m.1.len()) {
            return m.1.clone();
        }
        self.marks
            .iter()
            .filter(|m| m.0.file == file && m.0 <= at)
            .max_by_key(|m| (m.0, std::cmp::Reverse(m.1.len())))
            .map(|m| m.1.clone())
            .unwrap_or_default()
    }

    /// Moves `other` (a single file's map) into this one, renumbering
    /// `apis[i]` and `consumers[i]` by the given offsets so paths match the
    /// merged configuration.
    pub(crate) fn absorb(&mut self, other: SourceMap, api_offset: usize, consumer_offset: usize) {
        let base = self.files.len() as u32;
        let rebase = |p: Pos| Pos {
            file: p.file + base,
            ..p
        };
        let rename = |path: String| {
            shift_index(
                shift_index(path, "apis", api_offset),
                "consumers",
                consumer_offset,
            )
        };
        self.files.extend(other.files);
        for (path, pos) in other.keys {
            self.keys.entry(rename(path)).or_insert(rebase(pos));
        }
        for (pos, path, kind) in other.marks {
            self.marks.push((rebase(pos), rename(path), kind));
        }
    }

    fn record(&mut self, path: &str, pos: Pos, kind: MarkKind) {
        if kind == MarkKind::Key || !self.keys.contains_key(path) {
            self.keys.entry(path.to_owned()).or_insert(pos);
        }
        self.marks.push((pos, path.to_owned(), kind));
    }
}

/// `apis[3].hosts[0]` → `apis[3].hosts`; `listen.proxy` → `listen`; `dns` → ``.
pub(crate) fn parent_path(path: &str) -> &str {
    match path.rfind(['.', '[']) {
        Some(i) => &path[..i],
        None => "",
    }
}

fn last_segment(path: &str) -> &str {
    match path.rfind('.') {
        Some(i) => &path[i + 1..],
        None => path,
    }
}

/// Adds `by` to the index in `<list>[i]...` at the start of `path`.
fn shift_index(path: String, list: &str, by: usize) -> String {
    if by == 0 {
        return path;
    }
    let Some(rest) = path.strip_prefix(list).and_then(|r| r.strip_prefix('[')) else {
        return path;
    };
    let Some(end) = rest.find(']') else {
        return path;
    };
    match rest[..end].parse::<usize>() {
        Ok(i) => format!("{list}[{}{}", i + by, &rest[end..]),
        Err(_) => path,
    }
}

/// The document's top-level shape, used to re-check sections one by one.
#[derive(Debug, Default)]
pub(crate) struct Outline {
    /// The root is a block mapping (sections start on their own lines).
    pub root_block: bool,
    /// Top-level keys with their line, in source order.
    pub top: Vec<(String, u32)>,
    /// For top-level block sequences: each item's start (line, column).
    pub items: HashMap<String, Vec<(u32, u32)>>,
}

/// The result of walking one document.
#[derive(Debug)]
pub(crate) struct Scan {
    pub map: SourceMap,
    pub duplicates: Vec<ConfigError>,
    pub outline: Outline,
    /// The document has no content (empty, only comments, or an explicit null).
    pub empty: bool,
}

enum Frame {
    Map {
        path: String,
        seen: HashSet<String>,
        key: Option<String>,
    },
    Seq {
        path: String,
        next: usize,
    },
    /// A complex (non-scalar) mapping key: its contents have no path.
    Skip,
}

fn pos_of(span: &Span, file: u32) -> Pos {
    Pos {
        file,
        line: span.start.line() as u32,
        column: span.start.col() as u32 + 1,
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// Walks `src`; a YAML syntax error is returned as a located [`ConfigError`].
pub(crate) fn scan(src: &str, file: &str) -> Result<Scan, ConfigError> {
    let mut map = SourceMap::empty(file);
    map.record(
        "",
        Pos {
            file: 0,
            line: 1,
            column: 1,
        },
        MarkKind::Value,
    );
    let mut duplicates = Vec::new();
    let mut outline = Outline::default();
    let mut stack: Vec<Frame> = Vec::new();
    let mut empty = true;
    let mut started = false;

    for ev in Parser::new_from_str(src) {
        let (event, span) = ev.map_err(|e| ConfigError {
            file: file.to_owned(),
            line: e.marker().line() as u32,
            column: e.marker().col() as u32 + 1,
            path: String::new(),
            message: format!("invalid YAML: {}", e.info()),
        })?;
        let pos = pos_of(&span, 0);
        let is_node = matches!(
            event,
            Event::Scalar(..)
                | Event::SequenceStart(..)
                | Event::MappingStart(..)
                | Event::Alias(_)
        );
        match event {
            Event::DocumentEnd if started => break,
            Event::MappingEnd | Event::SequenceEnd => {
                stack.pop();
                continue;
            }
            _ if !is_node => continue,
            _ => {}
        }
        if stack.is_empty() && started {
            // Only a second root node would get here, which the parser reports
            // as a separate document; the loader rejects multiple documents.
            continue;
        }
        // Where this node sits: as a mapping key, or as a value at `path`.
        let path = match stack.last_mut() {
            None => {
                started = true;
                empty = match &event {
                    Event::Scalar(v, style, ..) => {
                        matches!(style, serde_saphyr::granit_parser::ScalarStyle::Plain)
                            && matches!(v.as_ref(), "" | "~" | "null" | "Null" | "NULL")
                    }
                    _ => false,
                };
                if let Event::MappingStart(style, ..) = &event {
                    outline.root_block = *style == StructureStyle::Block;
                }
                Some(String::new())
            }
            Some(Frame::Skip) => None,
            Some(Frame::Map { path, seen, key }) => match key.take() {
                None => {
                    let name = match &event {
                        Event::Scalar(v, ..) => v.to_string(),
                        _ => "?".to_owned(),
                    };
                    let child = join(path, &name);
                    if !seen.insert(name.clone()) {
                        duplicates.push(ConfigError {
                            file: file.to_owned(),
                            line: pos.line,
                            column: pos.column,
                            path: child.clone(),
                            message: format!("duplicate key `{name}`"),
                        });
                    } else {
                        map.record(&child, pos, MarkKind::Key);
                    }
                    if path.is_empty() {
                        outline.top.push((name.clone(), pos.line));
                    }
                    *key = Some(name);
                    // A key is not a value: complex keys are skipped entirely.
                    if matches!(event, Event::SequenceStart(..) | Event::MappingStart(..)) {
                        stack.push(Frame::Skip);
                    }
                    continue;
                }
                Some(name) => Some(join(path, &name)),
            },
            Some(Frame::Seq { path, next }) => {
                let child = format!("{path}[{next}]");
                if !path.contains(['.', '['])
                    && !path.is_empty()
                    && let Some(items) = outline.items.get_mut(path.as_str())
                {
                    items.push((pos.line, pos.column));
                }
                *next += 1;
                Some(child)
            }
        };
        if let Some(p) = &path {
            map.record(p, pos, MarkKind::Value);
        }
        match (event, path) {
            (Event::MappingStart(..), Some(path)) => stack.push(Frame::Map {
                path,
                seen: HashSet::new(),
                key: None,
            }),
            (Event::SequenceStart(style, ..), Some(path)) => {
                if !path.is_empty() && !path.contains(['.', '[']) && style == StructureStyle::Block
                {
                    outline.items.insert(path.clone(), Vec::new());
                }
                stack.push(Frame::Seq { path, next: 0 })
            }
            (Event::MappingStart(..) | Event::SequenceStart(..), None) => stack.push(Frame::Skip),
            _ => {}
        }
    }
    Ok(Scan {
        map,
        duplicates,
        outline,
        empty,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = "\
listen:
  proxy: 127.0.0.1:9000
apis:
  - name: gh
    allow:
      - methods: [GET]
      - paths:
          - /repos/**
          - /users/*
";

    #[test]
    fn maps_paths_to_positions() {
        let s = scan(SRC, "t.yaml").unwrap();
        assert!(s.duplicates.is_empty());
        assert!(!s.empty);
        let m = &s.map;
        assert_eq!(m.position("listen.proxy"), Some(("t.yaml", 2, 3)));
        assert_eq!(m.position("apis[0]"), Some(("t.yaml", 4, 5)));
        assert_eq!(m.position("apis[0].name"), Some(("t.yaml", 4, 5)));
        assert_eq!(
            m.position("apis[0].allow[0].methods[0]"),
            Some(("t.yaml", 6, 19))
        );
        assert_eq!(
            m.position("apis[0].allow[1].paths[1]"),
            Some(("t.yaml", 9, 13))
        );
        assert_eq!(
            s.outline.top,
            vec![("listen".to_owned(), 1), ("apis".to_owned(), 3)]
        );
        assert_eq!(s.outline.items.get("apis"), Some(&vec![(4, 5)]));
        assert!(s.outline.root_block);
    }

    #[test]
    fn locate_falls_back_to_ancestor_then_origin() {
        let s = scan(SRC, "t.yaml").unwrap();
        let e = s.map.locate("apis[0].hosts", "need a host");
        assert_eq!((e.line, e.column, e.path.as_str()), (4, 5, "apis[0].hosts"));
        let e = s.map.locate("apis[0].allow[1].paths[7]", "x");
        assert_eq!((e.line, e.column), (7, 9));
        let e = SourceMap::empty("f.yaml").locate("dns.timeout", "x");
        assert_eq!((e.file.as_str(), e.line, e.column), ("f.yaml", 1, 1));
    }

    #[test]
    fn reports_every_duplicate_key() {
        let s = scan("a: 1\nb:\n  c: 1\n  c: 2\na: 3\n", "d.yaml").unwrap();
        let got: Vec<_> = s
            .duplicates
            .iter()
            .map(|e| (e.line, e.column, e.path.as_str()))
            .collect();
        assert_eq!(got, vec![(4, 3, "b.c"), (5, 1, "a")]);
    }

    #[test]
    fn path_at_prefers_container_or_named_key() {
        let s = scan(SRC, "t.yaml").unwrap();
        assert_eq!(s.map.path_at(0, 4, 5, None), "apis[0]");
        assert_eq!(s.map.path_at(0, 4, 5, Some("name")), "apis[0].name");
        assert_eq!(s.map.path_at(0, 2, 10, None), "listen.proxy");
    }

    #[test]
    fn syntax_error_is_located() {
        let e = scan("a: [1, 2\nb: 3\n", "s.yaml").unwrap_err();
        assert_eq!(e.file, "s.yaml");
        assert!(e.line >= 1 && e.message.starts_with("invalid YAML"), "{e}");
    }

    #[test]
    fn empty_documents() {
        assert!(scan("", "e").unwrap().empty);
        assert!(scan("# only a comment\n", "e").unwrap().empty);
        assert!(scan("~\n", "e").unwrap().empty);
        assert!(!scan("{}\n", "e").unwrap().empty);
    }

    #[test]
    fn absorb_renumbers_lists() {
        let mut a = scan("apis:\n  - name: a\n", "a.yaml").unwrap().map;
        let b = scan("apis:\n  - name: b\n", "b.yaml").unwrap().map;
        a.absorb(b, 1, 0);
        assert_eq!(a.position("apis[1].name"), Some(("b.yaml", 2, 5)));
        assert_eq!(a.position("apis[0].name"), Some(("a.yaml", 2, 5)));
    }
}
