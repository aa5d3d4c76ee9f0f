//! Strict loading of `tollgate.yaml`: YAML syntax, unknown keys, duplicate
//! keys, wrong types and cross-field rules are all errors, each reported with
//! file, line, column and key path.
//!
//! A file is loaded as one YAML document. A directory is loaded as every
//! `*.yaml` / `*.yml` file directly in it, in file-name order, merged at the
//! top level (see [`load_file`]).
//!
//! serde stops at the first error of a document, so when deserialising a whole
//! file fails the loader re-checks each top-level section (and each item of a
//! block-style `apis` or `consumers` list) on its own, at its original line
//! numbers, to report the other broken sections in the same run.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_saphyr::{
    DefaultMessageFormatter, DuplicateKeyPolicy, Error as YamlError, MessageFormatter,
};

use crate::error::{ConfigError, ConfigErrors};
use crate::model::{Api, Config, Consumer};
use crate::source_map::{Outline, Scan, SourceMap, scan};
use crate::validate::validate;

/// A loaded, validated configuration and where each of its keys was written.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub source: SourceMap,
}

/// Loads and validates a configuration file or directory.
///
/// **File:** one YAML document. An empty file (or one holding only comments)
/// is the default configuration.
///
/// **Directory:** every regular `*.yaml` / `*.yml` file directly in it (not in
/// subdirectories), sorted by file name, is parsed on its own and the results
/// are merged at the top level: the `consumers` and `apis` lists are
/// concatenated in file order, and every other top-level key (`listen`,
/// `dns`, `network_guard`, …) may appear in at most one file — setting it in
/// two files is an error reported at the second one. Validation runs on the
/// merged result, and error locations point into the file that holds the key.
/// A directory without any such file is an error.
pub fn load_file(path: &Path) -> Result<Loaded, ConfigErrors> {
    if path.is_dir() {
        return load_dir(path);
    }
    let name = path.display().to_string();
    let src = read(path, &name)?;
    load_str(&src, &name)
}

/// Loads and validates configuration text; `origin` names it in errors.
pub fn load_str(src: &str, origin: &str) -> Result<Loaded, ConfigErrors> {
    let (config, scan) = parse_one(src, origin).map_err(sorted)?;
    finish(config, scan.map)
}

fn finish(config: Config, source: SourceMap) -> Result<Loaded, ConfigErrors> {
    let errors = validate(&config, &source);
    if errors.is_empty() {
        Ok(Loaded { config, source })
    } else {
        Err(sorted(errors))
    }
}

fn sorted(mut errors: Vec<ConfigError>) -> ConfigErrors {
    // Stable: problems at the same place keep the order they were found in.
    errors.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
    ConfigErrors(errors)
}

fn read(path: &Path, name: &str) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors::from(ConfigError {
            file: name.to_owned(),
            line: 1,
            column: 1,
            path: String::new(),
            message: format!("cannot read configuration: {e}"),
        })
    })
}

fn yaml_options(lenient_duplicates: bool) -> serde_saphyr::Options {
    let mut o = serde_saphyr::Options::default();
    // Errors are rendered by us, with a key path; snippets would duplicate that.
    o.with_snippet = false;
    // `yes`/`on` booleans are a classic YAML trap; only true/false are accepted.
    o.strict_booleans = true;
    o.reject_unsupported_tags = true;
    // Duplicates are already reported (all of them) by the source-map walk;
    // letting the first win here lets deserialisation find the other errors.
    if lenient_duplicates {
        o.duplicate_keys = DuplicateKeyPolicy::FirstWins;
    }
    o
}

/// Parses one document: syntax and duplicate keys (from the walk), then
/// types and unknown keys (from serde). No cross-field validation.
fn parse_one(src: &str, origin: &str) -> Result<(Config, Scan), Vec<ConfigError>> {
    let scan = scan(src, origin).map_err(|e| vec![e])?;
    if scan.empty {
        return Ok((Config::default(), scan));
    }
    let lenient = !scan.duplicates.is_empty();
    match serde_saphyr::from_str_with_options::<Config>(src, yaml_options(lenient)) {
        Ok(config) if scan.duplicates.is_empty() => Ok((config, scan)),
        Ok(_) => Err(scan.duplicates),
        Err(e) => {
            let mut errors = scan.duplicates.clone();
            errors.extend(convert(&e, &scan.map, origin, false));
            if scan.outline.root_block {
                errors.extend(recheck_sections(src, &scan.outline, &scan.map, origin));
            }
            if errors.is_empty() {
                // Only a duplicate the walk could not see (keys equal by value,
                // not by spelling) gets here; it must not pass silently.
                let mut e = convert_any(&e, &scan.map, origin);
                e.message = format!("duplicate key: {}", e.message);
                errors.push(e);
            }
            let mut seen = std::collections::HashSet::new();
            errors.retain(|e| seen.insert((e.line, e.column, e.message.clone())));
            Err(errors)
        }
    }
}

/// Turns a serde-saphyr error into a located error with a key path. `None`
/// for errors already reported another way (duplicate keys) or, when checking
/// a `section` out of context, aliases to anchors in other sections.
fn convert(err: &YamlError, map: &SourceMap, origin: &str, section: bool) -> Option<ConfigError> {
    match innermost(err) {
        YamlError::DuplicateMappingKey { .. } => None,
        YamlError::UnknownAnchor { .. } if section => None,
        _ => Some(convert_any(err, map, origin)),
    }
}

fn innermost(err: &YamlError) -> &YamlError {
    match err.without_snippet() {
        YamlError::AliasError { error, .. } => error.without_snippet(),
        other => other,
    }
}

fn convert_any(err: &YamlError, map: &SourceMap, origin: &str) -> ConfigError {
    let inner = innermost(err);
    let (line, column) = err
        .location()
        .map(|l| (l.line() as u32, l.column() as u32))
        .filter(|&(l, c)| l > 0 && c > 0)
        .unwrap_or((1, 1));
    let mut prefer = None;
    let message = match inner {
        YamlError::MultipleDocuments { .. } => {
            "only one YAML document is allowed per file (remove the `---` separator)".to_owned()
        }
        YamlError::SerdeUnknownField { field, .. } => {
            prefer = Some(field.as_str());
            DefaultMessageFormatter.format_message(inner).into_owned()
        }
        other => DefaultMessageFormatter.format_message(other).into_owned(),
    };
    ConfigError {
        file: origin.to_owned(),
        line,
        column,
        path: map.path_at(0, line, column, prefer),
        message,
    }
}

/// Deserialises each top-level section (and each item of block-style `apis`
/// and `consumers` lists) separately, padded with blank lines so that
/// reported positions are those of the original text.
fn recheck_sections(
    src: &str,
    outline: &Outline,
    map: &SourceMap,
    origin: &str,
) -> Vec<ConfigError> {
    let lines: Vec<&str> = src.lines().collect();
    let end_of_file = lines.len() as u32 + 1;
    let mut errors = Vec::new();
    for (i, (key, start)) in outline.top.iter().enumerate() {
        let end = outline.top.get(i + 1).map_or(end_of_file, |t| t.1);
        let items = outline
            .items
            .get(key)
            .filter(|v| v.windows(2).all(|w| w[0].0 < w[1].0));
        let list_item = match (key.as_str(), items) {
            ("apis", Some(items)) => Some((items, check::<Api> as Checker)),
            ("consumers", Some(items)) => Some((items, check::<Consumer> as Checker)),
            _ => None,
        };
        if let Some((items, checker)) = list_item {
            for (j, &(line, col)) in items.iter().enumerate() {
                let item_end = items.get(j + 1).map_or(end, |n| n.0);
                if let Some(text) = excerpt(&lines, line, item_end, col) {
                    errors.extend(checker(&text).and_then(|e| convert(&e, map, origin, true)));
                }
            }
        } else if let Some(text) = excerpt(&lines, *start, end, 1) {
            errors.extend(check::<Config>(&text).and_then(|e| convert(&e, map, origin, true)));
        }
    }
    errors
}

type Checker = fn(&str) -> Option<YamlError>;

fn check<T: DeserializeOwned>(text: &str) -> Option<YamlError> {
    serde_saphyr::from_str_with_options::<T>(text, yaml_options(true)).err()
}

/// Lines `[from, to)` (1-based) of the source, preceded by `from - 1` empty
/// lines. On the first line, everything before column `col` is blanked, which
/// turns `  - name: x` into a standalone mapping at the same column. `None`
/// when anything but indentation and a list dash precedes `col`.
fn excerpt(lines: &[&str], from: u32, to: u32, col: u32) -> Option<String> {
    let first = lines.get(from.checked_sub(1)? as usize)?;
    let cut = first
        .char_indices()
        .nth((col as usize).saturating_sub(1))
        .map_or(first.len(), |(i, _)| i);
    let (lead, rest) = first.split_at(cut);
    if !lead.chars().all(|c| c == ' ' || c == '-') {
        return None;
    }
    let mut text = "\n".repeat(from as usize - 1);
    text.push_str(&" ".repeat(lead.chars().count()));
    text.push_str(rest);
    text.push('\n');
    for l in lines
        .iter()
        .take(to.saturating_sub(1) as usize)
        .skip(from as usize)
    {
        text.push_str(l);
        text.push('\n');
    }
    Some(text)
}

/// The configuration files of a directory, in the order they are merged: every
/// `*.yaml` / `*.yml` entry that is (or links to) a regular file, by name.
/// Hidden entries are skipped, so a Kubernetes ConfigMap mount (whose
/// `..data` and `..<timestamp>` entries are directories) lists only the files
/// it projects. The file watcher lists the same files, so it reloads when and
/// only when one of them changes.
pub fn dir_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let hidden = path
            .file_name()
            .is_some_and(|n| n.as_encoded_bytes().starts_with(b"."));
        let is_yaml = path.extension().is_some_and(|x| x == "yaml" || x == "yml");
        if is_yaml && !hidden && path.is_file() {
            files.push(path);
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}

fn load_dir(dir: &Path) -> Result<Loaded, ConfigErrors> {
    let dir_name = dir.display().to_string();
    let io_err = |e: std::io::Error| {
        ConfigErrors::from(
            SourceMap::empty(dir_name.clone()).locate("", format!("cannot read directory: {e}")),
        )
    };
    let files = dir_files(dir).map_err(io_err)?;
    if files.is_empty() {
        return Err(SourceMap::empty(dir_name)
            .locate("", "no *.yaml or *.yml file in this directory")
            .into());
    }

    let mut errors = Vec::new();
    let mut parsed = Vec::new();
    for path in &files {
        let name = path.display().to_string();
        match read(path, &name) {
            Ok(src) => match parse_one(&src, &name) {
                Ok(p) => parsed.push(p),
                Err(e) => errors.extend(e),
            },
            Err(e) => errors.extend(e),
        }
    }
    if !errors.is_empty() {
        return Err(sorted(errors));
    }

    let mut merged = Config::default();
    let mut source = SourceMap::default();
    let mut owner: Vec<(String, String)> = Vec::new();
    for (mut config, scan) in parsed {
        let file = scan.map.files().first().cloned().unwrap_or_default();
        for (key, _) in &scan.outline.top {
            if key == "apis" || key == "consumers" {
                continue;
            }
            if let Some((_, prev)) = owner.iter().find(|(k, _)| k == key) {
                errors.push(scan.map.locate(
                    key,
                    format!(
                        "`{key}` is already set in {prev}; only `apis` and `consumers` may appear in more than one file"
                    ),
                ));
            } else if take_section(&mut merged, &mut config, key) {
                owner.push((key.clone(), file.clone()));
            }
        }
        let (api_offset, consumer_offset) = (merged.apis.len(), merged.consumers.len());
        merged.apis.append(&mut config.apis);
        merged.consumers.append(&mut config.consumers);
        source.absorb(scan.map, api_offset, consumer_offset);
    }
    if !errors.is_empty() {
        return Err(sorted(errors));
    }
    finish(merged, source)
}

/// Moves top-level section `key` from `src` into `dst`. `false` for the
/// list sections and names that are not sections.
fn take_section(dst: &mut Config, src: &mut Config, key: &str) -> bool {
    use std::mem::take;
    match key {
        "listen" => dst.listen = take(&mut src.listen),
        "admin" => dst.admin = take(&mut src.admin),
        "default_action" => dst.default_action = src.default_action,
        "report_only" => dst.report_only = src.report_only,
        "network_guard" => dst.network_guard = take(&mut src.network_guard),
        "dns" => dst.dns = take(&mut src.dns),
        "upstream" => dst.upstream = take(&mut src.upstream),
        "connect" => dst.connect = take(&mut src.connect),
        "server" => dst.server = take(&mut src.server),
        "logging" => dst.logging = take(&mut src.logging),
        "unknown_consumer" => dst.unknown_consumer = take(&mut src.unknown_consumer),
        "state" => dst.state = take(&mut src.state),
        "discovery" => dst.discovery = take(&mut src.discovery),
        "tls_intercept" => dst.tls_intercept = take(&mut src.tls_intercept),
        "cache" => dst.cache = take(&mut src.cache),
        "telemetry" => dst.telemetry = take(&mut src.telemetry),
        "auth" => dst.auth = take(&mut src.auth),
        _ => return false,
    }
    true
}

#[cfg(test)]
#[path = "load_tests.rs"]
mod tests;
