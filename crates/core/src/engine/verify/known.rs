//! What a keyless verifier checked in full on an earlier run and may take on trust while the
//! site still lists it unchanged (a witness's memory): objects whose bytes hashed to their
//! names, and versions whose references were followed. The next run reads only what is new;
//! what is remembered is checked by listing (still there, same size).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// Objects and references verified in full before.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Known {
    /// Objects whose bytes hashed to their names and were of their folder's kind: path → size.
    #[serde(default)]
    pub objects: BTreeMap<String, u64>,
    /// Versions whose references were all found, by [`version_key`]: the manifest and the
    /// indexes they resolved to.
    #[serde(default)]
    pub versions: BTreeMap<String, Vec<String>>,
    /// Indexes followed: index path → the paths of the packs it names.
    #[serde(default)]
    pub indexes: BTreeMap<String, Vec<String>>,
}

/// The key of one version in [`Known::versions`]: dataset, sequence number and ledger entry
/// id, so a rewritten entry at the same place is a different version.
pub fn version_key(dataset: &str, seq: u64, ledger_id: &crate::id::ObjectId) -> String {
    format!("{dataset}/{seq}/{ledger_id}")
}

impl Known {
    /// True when `path` was checked before at exactly `size` bytes.
    pub fn holds_object(&self, path: &str, size: u64) -> bool {
        self.objects.get(path) == Some(&size)
    }

    /// The references of a remembered version when every one is still listed (at its
    /// remembered size when it was read before): the manifest, its indexes and their packs.
    /// None when the version is not remembered or something moved: its references are then
    /// followed again (garbage collection may have repacked them, or a site lost them).
    pub fn version_refs(&self, key: &str, sizes: &HashMap<&str, u64>) -> Option<Vec<String>> {
        let listed = |p: &str| match (sizes.get(p), self.objects.get(p)) {
            (Some(now), Some(then)) => now == then,
            (Some(_), None) => true,
            (None, _) => false,
        };
        let direct = self.versions.get(key)?;
        let mut all = Vec::new();
        for path in direct {
            if !listed(path) {
                return None;
            }
            all.push(path.clone());
            if path.starts_with("index/") {
                for pack in self.indexes.get(path)? {
                    if !listed(pack) {
                        return None;
                    }
                    all.push(pack.clone());
                }
            }
        }
        Some(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remembered_version_stands_only_while_all_it_references_is_listed_unchanged() {
        let mut known = Known::default();
        known.objects.insert("packs/d/p".into(), 10);
        known.versions.insert(
            "d/1/x".into(),
            vec!["manifests/d/m".into(), "index/d/i".into()],
        );
        known
            .indexes
            .insert("index/d/i".into(), vec!["packs/d/p".into()]);
        let mut sizes: HashMap<&str, u64> =
            [("manifests/d/m", 1), ("index/d/i", 2), ("packs/d/p", 10)].into();
        assert_eq!(
            known.version_refs("d/1/x", &sizes).map(|v| v.len()),
            Some(3)
        );
        assert!(known.version_refs("d/2/y", &sizes).is_none());
        sizes.insert("packs/d/p", 11);
        assert!(known.version_refs("d/1/x", &sizes).is_none(), "resized");
        sizes.remove("packs/d/p");
        assert!(known.version_refs("d/1/x", &sizes).is_none(), "deleted");
    }
}
