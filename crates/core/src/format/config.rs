//! The vault configuration: identity, pinned public keys and format parameters. Stored as JSON
//! at `config`, with the root key's Ed25519 signature over its exact bytes at `config.sig`.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::format::layout;
use crate::keys::{self, RootSecret};
use crate::site::{Put, Site, SiteError};

const FORMAT: &str = "data-embassy-vault";

/// The legal minimum age `embassy init` pins unless told otherwise: 30 days. Intruders
/// (ransomware) typically dwell for weeks before they strike; a stolen credential granted
/// `delete` must not be able to erase recent history before anyone notices. See docs/keys.md.
pub const DEFAULT_MIN_AGE_SECS: u64 = 30 * 86_400;
const SIGNATURE_LABEL: &[u8] = b"data-embassy config v1";
/// The vault format this program writes and reads (docs/format.md). Version 2 (issue 12):
/// signed indexes, signer rights, a vault id derived from the root key, signed GC records,
/// deletions judged from signed bytes alone. Version 3 (issue 16): the `drill_recorded`
/// ledger entry and the `drill` right, and the `group_point` event; a program of version 2
/// would take such entries for unparsable noise (and a group's ledger for a gap), so it must
/// refuse the vault instead. Version-2 vaults stay readable (and writable) but take neither
/// drill entries nor group points. Version 4 (issues 17 and 18, one bump): WAL retention, base
/// backups' ledger entries carry their WAL start (`wal_start`) and garbage collection removes
/// streamed WAL below the cut-off it implies (a version-3 program would report that WAL as
/// lost); and `promotion_approvals` in the configuration with approvals embedded in `promoted`
/// entries, an authoritative promotion fencing the dataset's earlier writers (docs/format.md
/// §9c; a version-3 program would ignore the fence and accept a diverging history from a
/// fenced home). So a version-3 program must refuse the vault. Version-2 and -3 vaults stay
/// readable and writable: their WAL is never collected by the cut-off and their promotions
/// never fence. Version 5: a takeover approval names the key that signs the promotion
/// (`promote_key`, docs/format.md §9c); a version-4 program would ignore it and count approvals
/// for any signer, so a stolen credential could make its own promotion authoritative where a
/// version-5 program refuses it: two verifiers would disagree on who is fenced. Version 6:
/// withdrawals (`withdrawals/`, `history::withdrawal`): a writer that lost the race for a
/// ledger sequence number signs that its entry there is withdrawn, and readers take a withdrawn
/// entry a site still holds for noise; a version-5 program would read the same site as an
/// unresolved fork (or history a fork displaced), so two verifiers would disagree on whether
/// the dataset verifies and which version is the newest. Older vaults stay readable and
/// writable, and withdrawals count in them too (the rule only removes an entry nothing
/// continues, in a race its own signer lost). Version 7: delta blobs (blob kind 2,
/// docs/format.md §5), a changed PostgreSQL page stored against the same page's previous
/// version; a version-6 program refuses their index entries (an unknown blob kind) and, worse,
/// its garbage collection's repacking does not know that a delta keeps its base alive and would
/// drop bases that kept versions need. Version 8 (red team 8): a `promoted` entry anchors the
/// WAL its server replayed (`replayed`), and a writer the promotion fences keeps only the WAL
/// an anchor covers; a version-7 program accepts any WAL a fenced key signs below the switch
/// point, so a thief holding home's old credential could make it serve other rows. Version 9:
/// an approval of a takeover expires (48 hours, `history::approval::PROMOTION_APPROVAL_LIFETIME_NS`,
/// after it was given); a version-8 program counts an approval nobody used for ever, so a
/// takeover the approvers once allowed and did not need could be made months later.
pub const FORMAT_VERSION: u32 = 9;
/// The first format version whose writers store delta blobs (`format::pack::BlobKind::Delta`).
pub const DELTAS_SINCE: u32 = 7;
/// The first format version whose base backups record their WAL start and whose streamed WAL
/// retention collects (`history::wal_retention`).
pub const WAL_RETENTION_SINCE: u32 = 4;
/// The first format version whose promotions fence (docs/format.md §9c): in older vaults a
/// `promoted` entry stays what it was, information with no effect.
pub const FENCING_SINCE: u32 = 4;
/// The first format version whose vaults may hold `group_point` entries.
pub const GROUP_POINTS_SINCE: u32 = 3;
/// The oldest vault format this program reads.
pub const OLDEST_FORMAT_VERSION: u32 = 2;
/// BLAKE3 key-derivation context of the vault id (format §10).
const CONTEXT_VAULT_ID: &str = "data-embassy 2026 vault id v2";

/// The vault id that belongs to a root public key: hex of the first 16 bytes of
/// `BLAKE3-derive_key("data-embassy 2026 vault id v2", root public key)`. A configuration whose
/// `vault_id` is not this is refused, so the id (recorded out of band, carried by key files,
/// credentials and remembered state) pins the root key.
pub fn vault_id_of(root_public_key: &[u8; 32]) -> String {
    let derived = blake3::derive_key(CONTEXT_VAULT_ID, root_public_key);
    hex::encode(&derived[..16])
}

/// The vault id grouped for reading aloud: eight groups of four hex digits.
pub fn fingerprint(vault_id: &str) -> String {
    vault_id
        .as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("-")
}

/// Parses a vault id given by a person: 32 hex digits, in any case, with or without the
/// fingerprint's dashes and spaces. `None` when it is not one.
pub fn parse_vault_id(text: &str) -> Option<String> {
    let id: String = text
        .chars()
        .filter(|c| !matches!(c, '-' | ' ' | ':'))
        .collect::<String>()
        .to_ascii_lowercase();
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// Content-defined chunking parameters (bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    /// Smallest chunk.
    pub min: u32,
    /// Average chunk.
    pub avg: u32,
    /// Largest chunk.
    pub max: u32,
}

impl ChunkerParams {
    /// 512 KiB / 2 MiB / 8 MiB: few chunks for a small index, small enough that an edit in a
    /// large file stores little, and large enough that zstd compresses database pages as well as
    /// borg does (measured on the registry corpus: 2 MiB blocks compress them 0.8 % better
    /// than 1 MiB blocks).
    pub const DEFAULT: Self = Self {
        min: 512 * 1024,
        avg: 2 * 1024 * 1024,
        max: 8 * 1024 * 1024,
    };

    fn check(&self) -> std::result::Result<(), String> {
        use fastcdc::v2020 as cdc;
        let ok = (cdc::MINIMUM_MIN..=cdc::MINIMUM_MAX).contains(&self.min)
            && (cdc::AVERAGE_MIN..=cdc::AVERAGE_MAX).contains(&self.avg)
            && (cdc::MAXIMUM_MIN..=cdc::MAXIMUM_MAX).contains(&self.max)
            && self.min < self.avg
            && self.avg < self.max;
        if ok {
            Ok(())
        } else {
            Err(format!("chunker parameters {self:?} are out of range"))
        }
    }
}

/// The vault configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// Always `data-embassy-vault`.
    pub format: String,
    /// Format version; this code reads version 1.
    pub format_version: u32,
    /// Vault identity (hex, 16 bytes), derived from the root public key ([`vault_id_of`]).
    pub vault_id: String,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix: i64,
    /// Ed25519 key that signs this configuration (hex).
    pub root_public_key: String,
    /// Ed25519 keys allowed to sign ledger entries (hex).
    pub signers: Vec<String>,
    /// Chunking parameters.
    pub chunker: ChunkerParams,
    /// Target size of a pack in bytes.
    pub pack_target_bytes: u64,
    /// What this is and where the format is specified, for whoever finds the vault.
    pub specification: String,
    /// Ed25519 keys of witnesses whose cosignatures restores count (hex).
    #[serde(default)]
    pub witnesses: Vec<String>,
    /// How many witness cosignatures a checkpoint needs before restores trust it by default.
    #[serde(default)]
    pub witness_quorum: u32,
    /// Ed25519 keys of approvers whose signed approvals count for deletions outside the
    /// retention policy (hex). Omitted when empty, so vaults without approvers keep the bytes
    /// older programs read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvers: Vec<String>,
    /// How many distinct approvers must approve each version deleted outside the retention
    /// policy. 0: such deletions are refused outright.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub approvals_required: u32,
    /// How many distinct pinned approvers must approve a `promoted` entry before it is
    /// authoritative (fences the dataset's earlier writers) when its signer is neither the root
    /// key nor a key of `signers`. 0: no promotion policy (`embassy promote` needs no approvals,
    /// and only the root's or a configured signer's promotion fences).
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub promotion_approvals: u32,
    /// The legal minimum age, in seconds, of every version of every dataset: deleting a younger
    /// version is outside any retention policy and needs approvals.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub min_age_secs: u64,
    /// Per-dataset legal minimum ages that replace `min_age_secs` for those datasets.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub dataset_min_age_secs: std::collections::BTreeMap<String, u64>,
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

impl VaultConfig {
    /// A new configuration for a vault whose root secret is `root`.
    pub fn new(root: &RootSecret) -> Self {
        let root_public = root.root_signing_key().verifying_key().to_bytes();
        Self {
            format: FORMAT.to_string(),
            format_version: FORMAT_VERSION,
            vault_id: vault_id_of(&root_public),
            created_unix: now_unix(),
            root_public_key: hex::encode(root_public),
            signers: vec![hex::encode(
                root.writer_signing_key(0).verifying_key().to_bytes(),
            )],
            chunker: ChunkerParams::DEFAULT,
            pack_target_bytes: 16 * 1024 * 1024,
            specification: "This is a Data Embassy vault: everything in it is encrypted and signed, \
                            and a site never holds the keys. The format is specified in docs/format.md \
                            of Data Embassy (format version 1). Check it without keys: \
                            embassy verify --site <this location>"
                .to_string(),
            witnesses: Vec::new(),
            witness_quorum: 0,
            approvers: Vec::new(),
            approvals_required: 0,
            promotion_approvals: 0,
            min_age_secs: 0,
            dataset_min_age_secs: Default::default(),
        }
    }

    /// Writes the configuration and its signature to an empty site.
    pub fn create(&self, site: &dyn Site, root: &RootSecret) -> Result<()> {
        if let Some(existing) = Self::try_load(site)? {
            return Err(Error::VaultExists {
                site: site.location().to_string(),
                vault_id: existing.vault_id,
            });
        }
        if site_holds_objects(site)? {
            return Err(Error::invalid(format!(
                "site {} is not empty: it holds objects of a vault whose configuration is missing; \
                 seed it again from a site that holds the vault, or choose an empty location",
                site.location()
            )));
        }
        let body = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::invalid(format!("encoding config: {e}")))?;
        let signature = keys::sign(&root.root_signing_key(), SIGNATURE_LABEL, &body);
        site.put(layout::CONFIG_SIGNATURE, hex::encode(signature).as_bytes())?;
        match site.put(layout::CONFIG, &body)? {
            Put::Created => Ok(()),
            Put::AlreadyExisted => Err(Error::VaultExists {
                site: site.location().to_string(),
                vault_id: "created concurrently".into(),
            }),
        }
    }

    /// Loads and checks the configuration, or `None` when the site holds no vault.
    pub fn try_load(site: &dyn Site) -> Result<Option<Self>> {
        let body = match site.get(layout::CONFIG) {
            Ok(body) => body,
            Err(SiteError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let config: VaultConfig = serde_json::from_slice(&body).map_err(|e| {
            Error::corrupt(layout::CONFIG, format!("not a vault configuration: {e}"))
        })?;
        if config.format != FORMAT {
            return Err(Error::corrupt(layout::CONFIG, "not a Data Embassy vault"));
        }
        if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&config.format_version) {
            let way_out = if config.format_version < OLDEST_FORMAT_VERSION {
                "a vault written before signed indexes, rights and a derived vault id: restore it \
                 with the embassy release that wrote it, then back it up into a new vault"
            } else {
                "upgrade embassy"
            };
            return Err(Error::invalid(format!(
                "vault format version {} is not one this program reads \
                 ({OLDEST_FORMAT_VERSION} to {FORMAT_VERSION}): {way_out}",
                config.format_version
            )));
        }
        config
            .chunker
            .check()
            .map_err(|p| Error::corrupt(layout::CONFIG, p))?;
        if !(1024..=1 << 30).contains(&config.pack_target_bytes) {
            return Err(Error::corrupt(
                layout::CONFIG,
                "pack target size out of range",
            ));
        }
        if config.witness_quorum as usize > config.witnesses.len() {
            return Err(Error::corrupt(
                layout::CONFIG,
                "witness quorum exceeds the number of witnesses",
            ));
        }
        if config.approvals_required as usize > config.approver_keys().len() {
            return Err(Error::corrupt(
                layout::CONFIG,
                "approvals_required exceeds the number of valid approver keys",
            ));
        }
        if config.promotion_approvals as usize > config.approver_keys().len() {
            return Err(Error::corrupt(
                layout::CONFIG,
                "promotion_approvals exceeds the number of valid approver keys",
            ));
        }
        let root_key = decode_key(&config.root_public_key)
            .ok_or_else(|| Error::corrupt(layout::CONFIG, "root_public_key is not 32 hex bytes"))?;
        let owner = vault_id_of(&root_key);
        if !crate::keys::crypto::ct_eq(owner.as_bytes(), config.vault_id.as_bytes()) {
            return Err(Error::SubstitutedConfig {
                site: site.location().to_string(),
                problem: format!(
                    "the configuration names vault {} but its root key belongs to vault {owner}",
                    config.vault_id
                ),
            });
        }
        let signature = site.get(layout::CONFIG_SIGNATURE).map_err(|e| match e {
            SiteError::NotFound { .. } => Error::Missing {
                path: layout::CONFIG_SIGNATURE.into(),
                site: site.location().into(),
                referenced_by: layout::CONFIG.into(),
            },
            e => e.into(),
        })?;
        let signature = hex::decode(signature.trim_ascii())
            .map_err(|_| Error::corrupt(layout::CONFIG_SIGNATURE, "not hex"))?;
        if !keys::verify_signature(&root_key, SIGNATURE_LABEL, &body, &signature) {
            return Err(Error::corrupt(
                layout::CONFIG,
                "the root key's signature does not match the configuration: it was altered",
            ));
        }
        Ok(Some(config))
    }

    /// Loads the configuration, or says there is no vault. A site that holds vault objects but
    /// no configuration is damaged, not empty: that is reported as a missing object.
    pub fn load(site: &dyn Site) -> Result<Self> {
        match Self::try_load(site)? {
            Some(config) => Ok(config),
            None if site_holds_objects(site)? => Err(Error::Missing {
                path: layout::CONFIG.into(),
                site: site.location().to_string(),
                referenced_by: "every vault (the site holds vault objects but no configuration; \
                                seed it again from a site that holds the vault)"
                    .into(),
            }),
            None => Err(Error::NoVault {
                site: site.location().to_string(),
            }),
        }
    }

    /// The root signing key's public half.
    pub fn root_key(&self) -> Result<[u8; 32]> {
        decode_key(&self.root_public_key)
            .ok_or_else(|| Error::corrupt(layout::CONFIG, "root_public_key is not 32 hex bytes"))
    }

    /// The pinned witness keys.
    pub fn witness_keys(&self) -> Vec<[u8; 32]> {
        self.witnesses
            .iter()
            .filter_map(|s| decode_key(s))
            .collect()
    }

    /// The pinned approver keys (distinct).
    pub fn approver_keys(&self) -> Vec<[u8; 32]> {
        let mut keys: Vec<[u8; 32]> = self
            .approvers
            .iter()
            .filter_map(|s| decode_key(s))
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// The legal minimum age of `dataset`'s versions, in seconds.
    pub fn min_age_of(&self, dataset: &str) -> u64 {
        self.dataset_min_age_secs
            .get(dataset)
            .copied()
            .unwrap_or(self.min_age_secs)
    }

    /// The pinned ledger signers.
    pub fn signer_keys(&self) -> Vec<[u8; 32]> {
        self.signers.iter().filter_map(|s| decode_key(s)).collect()
    }

    /// Checks that `root` is this vault's root secret.
    pub fn check_root(&self, root: &RootSecret) -> Result<()> {
        let derived = hex::encode(root.root_signing_key().verifying_key().to_bytes());
        if crate::keys::crypto::ct_eq(derived.as_bytes(), self.root_public_key.as_bytes()) {
            Ok(())
        } else {
            Err(Error::WrongKey(format!(
                "this key does not belong to vault {}: use that vault's key file",
                self.vault_id
            )))
        }
    }
}

/// True when the site holds anything besides a configuration (a local site's `tmp/` aside).
fn site_holds_objects(site: &dyn Site) -> Result<bool> {
    Ok(site
        .list("")?
        .iter()
        .any(|i| !matches!(i.path.as_str(), layout::CONFIG | layout::CONFIG_SIGNATURE)))
}

fn decode_key(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> i64 {
    now_unix_nanos() / 1_000_000_000
}

/// Nanoseconds since the Unix epoch.
pub fn now_unix_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}
