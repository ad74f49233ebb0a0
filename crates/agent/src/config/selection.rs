//! A file-tree dataset's selection in `embassy.toml`: `exclude`, `exclude_file`,
//! `exclude_caches` and `one_file_system` beside `files` in its source table, checked here
//! (every pattern parsed, every exclude file read) so a mistake is reported with its line.

use embassy_sources::selection::{Pattern, Patterns};
use toml::de::DeValue;

use super::parse::{describe, Fields, Parser};
use super::FileSelection;

/// The fields this module reads.
pub(super) const FIELDS: [&str; 4] = [
    "exclude",
    "exclude_file",
    "exclude_caches",
    "one_file_system",
];

impl Parser<'_> {
    /// The selection fields of a source table (`field` is its name); `files` tells whether the
    /// source is a file tree, the only kind they apply to.
    pub(super) fn file_selection(
        &mut self,
        s: &mut Fields<'_, '_>,
        field: &str,
        files: bool,
    ) -> FileSelection {
        let mut out = FileSelection::default();
        let mut present = Vec::new();
        if let Some(v) = self.take(s, "exclude") {
            present.push(v.span());
            let name = format!("{field}.exclude");
            match v.get_ref() {
                DeValue::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        match item.get_ref().as_str().map(Pattern::parse) {
                            Some(Ok(p)) => out.exclude.push(p.as_str().to_string()),
                            Some(Err(e)) => {
                                self.problem(item.span(), &format!("{name}[{i}]"), e.to_string())
                            }
                            None => self.problem(
                                item.span(),
                                &format!("{name}[{i}]"),
                                format!("expected a pattern, found {}", describe(item.get_ref())),
                            ),
                        }
                    }
                }
                other => self.problem(
                    v.span(),
                    &name,
                    format!(
                        "expected a list of patterns like [\"*.tmp\", \"/cache\"], found {}",
                        describe(other)
                    ),
                ),
            }
        }
        if let Some(v) = self.take(s, "exclude_file") {
            present.push(v.span());
            let name = format!("{field}.exclude_file");
            let items: Vec<_> = match v.get_ref() {
                DeValue::String(_) => vec![v],
                DeValue::Array(items) => items.iter().collect(),
                _ => Vec::new(),
            };
            if items.is_empty() {
                self.problem(
                    v.span(),
                    &name,
                    "expected a file of patterns (a path, or a list of paths)",
                );
            }
            for item in items {
                let Some(p) = item.get_ref().as_str().filter(|p| !p.is_empty()) else {
                    self.problem(item.span(), &name, "expected a path (a non-empty string)");
                    continue;
                };
                let path = self.path(p);
                match Patterns::new().add_file(&path) {
                    Ok(()) => out.exclude_files.push(path),
                    Err(e) => self.problem(item.span(), &name, e.to_string()),
                }
            }
        }
        for key in ["exclude_caches", "one_file_system"] {
            let Some(v) = self.take(s, key) else { continue };
            present.push(v.span());
            let value = match v.get_ref() {
                DeValue::Boolean(b) => *b,
                other => {
                    self.problem(
                        v.span(),
                        &format!("{field}.{key}"),
                        format!("expected true or false, found {}", describe(other)),
                    );
                    false
                }
            };
            if key == "exclude_caches" {
                out.exclude_caches = value;
            } else {
                out.one_file_system = value;
            }
        }
        if !files {
            if let Some(span) = present.into_iter().next() {
                self.problem(
                    span,
                    field,
                    "exclude, exclude_file, exclude_caches and one_file_system apply to a files \
                     source only",
                );
            }
        }
        out
    }
}
