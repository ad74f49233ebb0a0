//! The PostgreSQL restore both `embassy restore` and the restore drill run: the data
//! directory restored from the newest base backup that reaches the target (the `--latest`
//! pin and the overriding settings are `embassy_postgres::restore`'s), and the fetch folder
//! beside it that PostgreSQL's `restore_command` uses (a reader credential of that dataset
//! alone, made for this restore). One home, so a drill restores exactly as an operator does.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use embassy_core::engine::vault::{Keyring, Vault};
use embassy_core::keys::keyfile::{KdfParams, KeyFile, PURPOSE_READER};
use embassy_core::progress::Progress;
use embassy_core::{Error, Result};
use embassy_postgres::restore::{self, Mode, PgRestore, PgRestoreOptions, RecoveryTarget};
use embassy_postgres::tablespace::Relocation;
use zeroize::Zeroizing;

/// How the `restore_command` reaches the vault: the sites and `min_sites` this process opened
/// it with, its state folder (if one was given), and the `embassy` program PostgreSQL runs.
#[derive(Debug, Clone)]
pub struct FetchSetup {
    /// The vault's sites, as given (folders are made absolute; `s3://` keys come from this
    /// process's environment and go into the fetch folder).
    pub sites: Vec<String>,
    /// How many sites must answer.
    pub min_sites: Option<usize>,
    /// The state folder given (`--state-dir`, EMBASSY_STATE_DIR, the agent's), if any.
    pub state_dir: Option<PathBuf>,
    /// The `embassy` program that runs `wal-fetch` (normally this program).
    pub program: PathBuf,
}

impl FetchSetup {
    /// The set-up for this program with `sites`, `min_sites` and `state_dir`.
    pub fn this_program(
        sites: Vec<String>,
        min_sites: Option<usize>,
        state_dir: Option<PathBuf>,
    ) -> Result<Self> {
        let program = std::env::current_exe()
            .map_err(|e| Error::io("finding the path of this program", e))?;
        Ok(Self {
            sites,
            min_sites,
            state_dir,
            program,
        })
    }
}

/// A PostgreSQL restore to run.
#[derive(Debug, Clone)]
pub struct PgRestoreRequest<'a> {
    /// The dataset.
    pub dataset: &'a str,
    /// The new or empty folder for the data directory.
    pub data_dir: &'a Path,
    /// Where recovery stops.
    pub target: RecoveryTarget,
    /// Owner (uid, gid) of the data directory, when not this process's user.
    pub owner: Option<(u32, u32)>,
    /// A base backup no witnessed checkpoint covers yet is acceptable.
    pub allow_unwitnessed: bool,
    /// Tablespaces put elsewhere.
    pub relocations: &'a [Relocation],
    /// Follow exactly this timeline (None: the newest, refused when it leaves out acknowledged
    /// WAL with no takeover that decided it).
    pub timeline: Option<u32>,
    /// How the restore_command reaches the vault.
    pub fetch: &'a FetchSetup,
}

/// Restores `request.dataset` as a data directory recovering to the target, with its fetch
/// folder; nothing is left behind on failure. The caller removes the fetch folder
/// ([`FetchFolder::remove`]) when the data directory is gone.
pub fn restore(
    vault: &Vault,
    keyring: &Keyring,
    request: &PgRestoreRequest,
    progress: &dyn Progress,
) -> Result<(PgRestore, FetchFolder)> {
    // The newest state must be provable against the site's checkpoints, as for any restore of
    // the newest version (red team 12: a site withholding the newest ledger entries and WAL
    // made `restore --latest` return an older state in silence).
    if matches!(
        request.target,
        embassy_postgres::target::RecoveryTarget::Latest
    ) {
        vault.check_newest_checkpoints(request.dataset)?;
    }
    let fetch = FetchFolder::create(
        request.fetch,
        vault,
        keyring,
        request.dataset,
        request.owner,
        request.data_dir,
    )?;
    let options = PgRestoreOptions {
        mode: Mode::Recover(request.target.clone()),
        restore_command: fetch.restore_command.clone(),
        owner: request.owner,
        allow_unwitnessed: request.allow_unwitnessed,
        relocations: request.relocations.to_vec(),
        timeline: request.timeline,
    };
    let done = restore::restore(
        vault,
        keyring,
        request.dataset,
        request.data_dir,
        &options,
        progress,
    )
    .map_err(Error::from)
    .inspect_err(|_| fetch.remove())?;
    Ok((done, fetch))
}

/// Writes a standby data directory of `dataset` into the new or empty folder `data_dir` (the
/// newest base backup, `standby.signal`, a `restore_command` through its own fetch folder, so
/// the standby follows the vault with a reader credential of that dataset alone), as
/// `embassy standby` and the agent's embassy node make it; nothing is left behind on failure.
#[allow(clippy::too_many_arguments)]
pub fn standby(
    vault: &Vault,
    keyring: &Keyring,
    dataset: &str,
    data_dir: &Path,
    owner: Option<(u32, u32)>,
    relocations: &[Relocation],
    timeline: Option<u32>,
    fetch: &FetchSetup,
    progress: &dyn Progress,
) -> Result<(PgRestore, FetchFolder)> {
    // A standby follows the newest state: the site's history must extend its checkpoints.
    vault.check_newest_checkpoints(dataset)?;
    let folder = FetchFolder::create(fetch, vault, keyring, dataset, owner, data_dir)?;
    let done = embassy_postgres::standby::standby(
        vault,
        keyring,
        dataset,
        data_dir,
        &folder.restore_command,
        owner,
        relocations,
        timeline,
        progress,
    )
    .map_err(Error::from)
    .inspect_err(|_| folder.remove())?;
    Ok((done, folder))
}

/// Complete WAL segments the restore's fetch helper keeps ahead of PostgreSQL's replay (16 MiB
/// each, in the private spool of the fetch folder's state folder).
const PREFETCH_SEGMENTS: usize = 16;

/// Segments the fetch helper fetches at once.
const PREFETCH_PARALLEL: usize = 2;

/// Files of the fetch folder: the per-restore reader credential, its passphrase, the S3
/// credentials, and the state folder of `wal-fetch`.
const FETCH_CREDENTIAL: &str = "reader.cred";
const FETCH_PASSPHRASE: &str = "passphrase";
const FETCH_S3_CREDENTIALS: &str = "s3-credentials";
const FETCH_STATE: &str = "state";

/// Argon2id for the per-restore credential: its passphrase is 32 random bytes, which no
/// stretching makes harder to guess, so the cheapest allowed setting (every WAL file PostgreSQL
/// fetches opens the credential).
const FETCH_KDF: KdfParams = KdfParams {
    memory_kib: 8 * 1024,
    iterations: 1,
    parallelism: 1,
};

/// Variables passed on to `wal-fetch` when the operator's environment sets them: where and how
/// to reach S3 sites and which CAs to trust, never a secret (S3 keys go into the fetch
/// folder's `s3-credentials`).
const FETCH_ENV: &[&str] = &[
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "EMBASSY_S3_ENDPOINT",
    "EMBASSY_S3_PATH_STYLE",
    "EMBASSY_S3_CONDITIONAL_WRITES",
    "EMBASSY_S3_OBJECT_LOCK",
    "EMBASSY_S3_CONNECT_TIMEOUT",
    "EMBASSY_S3_TIMEOUT",
    "EMBASSY_S3_RETRIES",
    "EMBASSY_S3_PARALLELISM",
    "EMBASSY_S3_PART_SIZE_MIB",
    "EMBASSY_S3_MULTIPART_THRESHOLD_MIB",
    "EMBASSY_S3_LISTING_LIMIT_MIB",
    "EMBASSY_WAL_FETCH_RETRY_SECONDS",
    "EMBASSY_WAL_FETCH_IDLE_SECONDS",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
];

/// What PostgreSQL's `restore_command` is given on this host: a folder beside the data
/// directory (`<data dir>.wal-fetch`, never inside it: base backups of the restored server
/// must not carry it), owned by the data directory's owner, mode 0700.
pub struct FetchFolder {
    /// The folder.
    pub path: PathBuf,
    /// The state folder of `wal-fetch`: in the fetch folder, or below the state folder given
    /// with `--state-dir` (or EMBASSY_STATE_DIR) when one is.
    pub state: PathBuf,
    /// The restore_command using it.
    pub restore_command: String,
}

impl FetchFolder {
    /// The fetch folder of a data directory.
    fn path_for(data_dir: &Path) -> Result<PathBuf> {
        let data_dir = std::path::absolute(data_dir)
            .map_err(|e| Error::io(format!("resolving {}", data_dir.display()), e))?;
        match (data_dir.parent(), data_dir.file_name()) {
            (Some(parent), Some(name)) => {
                let mut name = name.to_os_string();
                name.push(".wal-fetch");
                Ok(parent.join(name))
            }
            _ => Err(Error::invalid(format!(
                "{} cannot be a data directory: give a folder below /",
                data_dir.display()
            ))),
        }
    }

    /// Writes the fetch folder for restoring `dataset` into `data_dir` (a reader credential
    /// of that dataset alone, with a fresh random passphrase; the S3 keys the fetch needs; a
    /// state folder), builds the `restore_command` that uses only it, and checks that command
    /// as PostgreSQL will run it (see [`preflight`]). Nothing is left behind on failure.
    pub fn create(
        setup: &FetchSetup,
        vault: &Vault,
        keyring: &Keyring,
        dataset: &str,
        owner: Option<(u32, u32)>,
        data_dir: &Path,
    ) -> Result<Self> {
        let path = Self::path_for(data_dir)?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
        }
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| {
                Error::io(
                    format!(
                        "creating {} for the restore_command's credential{}",
                        path.display(),
                        if e.kind() == std::io::ErrorKind::AlreadyExists {
                            " (it exists: it belongs to an earlier restore to the same folder; \
                             remove it when that data directory is gone, or restore elsewhere)"
                        } else {
                            ""
                        }
                    ),
                    e,
                )
            })?;
        // Below the state folder given when the data directory's owner can reach it there;
        // in the fetch folder otherwise, as without one (a private state folder of root's).
        let state = match &setup.state_dir {
            Some(dir) => Self::state_below(dir, &path, owner)?,
            None => None,
        }
        .unwrap_or_else(|| path.join(FETCH_STATE));
        let folder = Self {
            path,
            state,
            restore_command: String::new(),
        };
        match folder.fill(setup, vault, keyring, dataset, owner, data_dir) {
            Ok(restore_command) => Ok(Self {
                restore_command,
                ..folder
            }),
            Err(e) => {
                folder.remove();
                Err(e)
            }
        }
    }

    /// Removes the fetch folder beside `data_dir` left by an earlier standby or restore whose
    /// data directory is gone (nothing when there is none).
    /// Only a folder holding nothing but what a fetch folder holds is removed: anything else
    /// under that name (a site's folder, a state folder, named so by mistake) is refused and
    /// kept (red team 9: a site folder named `<data_dir>.wal-fetch` was emptied).
    pub fn remove_beside(data_dir: &Path) -> Result<()> {
        let path = Self::path_for(data_dir)?;
        let entries = match std::fs::read_dir(&path) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        };
        let ours = [
            FETCH_CREDENTIAL,
            FETCH_PASSPHRASE,
            FETCH_S3_CREDENTIALS,
            FETCH_STATE,
        ];
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
            let name = entry.file_name();
            if !ours.iter().any(|o| name == *o) {
                return Err(Error::invalid(format!(
                    "{} holds {}, which no fetch folder holds: it is not the fetch folder of \
                     {} and is not removed; move it, or give the data directory another name",
                    path.display(),
                    name.to_string_lossy(),
                    data_dir.display()
                )));
            }
        }
        match std::fs::remove_dir_all(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io(format!("removing {}", path.display()), e))
            }
            _ => Ok(()),
        }
    }

    /// The state folder of the `wal-fetch` of fetch folder `fetch` below the state folder
    /// `dir`: `<dir>/wal-fetch/<folder name>-<hash of its path>` (one per restore), an absolute
    /// path (PostgreSQL runs the command in the data directory); `None` when `owner`, who runs
    /// it, cannot pass through every folder above it.
    fn state_below(dir: &Path, fetch: &Path, owner: Option<(u32, u32)>) -> Result<Option<PathBuf>> {
        let dir = std::path::absolute(dir)
            .map_err(|e| Error::io(format!("finding the path of {}", dir.display()), e))?;
        if !reachable_by(&dir, owner) {
            return Ok(None);
        }
        let name = fetch
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // The BLAKE3 hash of the path (an object id is one).
        let hash = embassy_core::id::ObjectId::of(fetch.as_os_str().as_encoded_bytes()).to_hex();
        let parent = dir.join("wal-fetch");
        // Traversable by the data directory's owner, listable only by this user.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(&parent)
            .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
        Ok(Some(parent.join(format!("{name}-{}", &hash[..16]))))
    }

    fn fill(
        &self,
        setup: &FetchSetup,
        vault: &Vault,
        keyring: &Keyring,
        dataset: &str,
        owner: Option<(u32, u32)>,
        data_dir: &Path,
    ) -> Result<String> {
        let vault_id = vault.config().vault_id.clone();
        let epoch = embassy_core::history::ledger::key_epoch(&vault.history(dataset)?);
        let label = format!(
            "wal-fetch for {} (restored {})",
            std::path::absolute(data_dir)
                .unwrap_or_else(|_| data_dir.to_path_buf())
                .display(),
            embassy_core::time::utc(embassy_core::format::config::now_unix_nanos())
        );
        let credential = keyring.reader_credential_for(&vault_id, dataset, &label, epoch)?;
        let passphrase = Zeroizing::new(hex::encode(
            embassy_core::keys::crypto::random_32().as_slice(),
        ));
        let key_file = KeyFile::seal_payload(
            &credential.to_bytes(),
            PURPOSE_READER,
            &vault_id,
            passphrase.as_bytes(),
            FETCH_KDF,
        )?;
        let credential_path = self.path.join(FETCH_CREDENTIAL);
        key_file.store(&credential_path)?;
        let passphrase_path = self.path.join(FETCH_PASSPHRASE);
        write_private(&passphrase_path, passphrase.as_bytes())?;
        let state = &self.state;
        // A state folder at this name was left by an earlier restore to the same path, whose
        // data directory is gone (a restore needs a new or empty one): it is dropped, never
        // reused (a link there is removed, not followed).
        match std::fs::symlink_metadata(state) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(state),
            Ok(_) => std::fs::remove_file(state),
            Err(_) => Ok(()),
        }
        .map_err(|e| Error::io(format!("removing the old {}", state.display()), e))?;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(state)
            .map_err(|e| Error::io(format!("creating {}", state.display()), e))?;

        let mut env = Vec::new();
        if let Some(s3) = setup.sites.iter().find(|s| s.starts_with("s3://")) {
            let file = self.path.join(FETCH_S3_CREDENTIALS);
            write_private(&file, s3_credentials_ini(s3)?.as_bytes())?;
            env.push(format!("AWS_SHARED_CREDENTIALS_FILE={}", file.display()));
            env.push("AWS_CONFIG_FILE=/dev/null".to_string());
        }
        for name in FETCH_ENV {
            if let Some(value) = std::env::var(name).ok().filter(|v| !v.is_empty()) {
                env.push(format!("{name}={value}"));
            }
        }
        if let Some((uid, gid)) = owner {
            let s3 = self.path.join(FETCH_S3_CREDENTIALS);
            for p in [&credential_path, &passphrase_path, &s3, state, &self.path] {
                match std::os::unix::fs::lchown(p, Some(uid), Some(gid)) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && p == &s3 => {}
                    r => {
                        r.map_err(|e| Error::io(format!("giving {} to uid {uid}", p.display()), e))?
                    }
                }
            }
        }

        let mut globals = restore_program(setup)?;
        globals.extend([
            "--vault-id".into(),
            vault_id,
            "--key-file".into(),
            credential_path.display().to_string(),
            "--passphrase-file".into(),
            passphrase_path.display().to_string(),
            "--state-dir".into(),
            state.display().to_string(),
            "--quiet".into(),
        ]);
        let program = &setup.program;
        if program.to_string_lossy().contains('=') {
            return Err(Error::invalid(format!(
                "this program's path {} has a '=', which `env` would read as a variable: \
                 install embassy under a path without one",
                program.display()
            )));
        }
        let mut args = vec!["-i".to_string()];
        args.extend(env);
        args.push(program.display().to_string());
        args.extend(globals);
        // Serve the newest, still growing WAL segment too (--partial); one fetch helper per
        // restore keeps the next complete segments in a spool in the state folder (never in
        // the data directory, which base backups of the server copy).
        let fetch_args = [
            "--partial".to_string(),
            "--prefetch".into(),
            PREFETCH_SEGMENTS.to_string(),
            "--prefetch-parallel".into(),
            PREFETCH_PARALLEL.to_string(),
        ];
        let command = restore::restore_command(Path::new(ENV_PROGRAM), &args, &fetch_args, dataset)
            .map_err(Error::from)?;
        preflight(&command, owner)?;
        Ok(command)
    }

    /// Removes the folder and its state folder (after a failed restore).
    pub fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.state);
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Whether `owner` (this process's user when `None`) may pass through `dir` and every folder
/// above it (search permission by owner, group or others; root passes everywhere).
pub(crate) fn reachable_by(dir: &Path, owner: Option<(u32, u32)>) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some((uid, gid)) = owner.filter(|(uid, _)| *uid != current_uid()) else {
        return true;
    };
    if uid == 0 {
        return true;
    }
    dir.ancestors()
        .all(|folder| match std::fs::metadata(folder) {
            Ok(m) => {
                let mode = m.mode();
                (m.uid() == uid && mode & 0o100 != 0)
                    || (m.uid() != uid && m.gid() == gid && mode & 0o010 != 0)
                    || (m.uid() != uid && m.gid() != gid && mode & 0o001 != 0)
            }
            // Not made yet: its parent decides (the folders made here are 0711).
            Err(_) => true,
        })
}

/// Runs the `restore_command` without an environment: it sets its own.
const ENV_PROGRAM: &str = "/usr/bin/env";

/// Writes a new file, mode 0600, refusing to replace anything (a link included).
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// The S3 keys this process uses for `location`, as an AWS credentials file (profile
/// `default`) with the region and a custom endpoint.
fn s3_credentials_ini(location: &str) -> Result<Zeroizing<String>> {
    let cfg = embassy_sites::s3::S3Config::from_location(location).map_err(|e| Error::Source {
        what: "S3 site".into(),
        problem: e.to_string(),
    })?;
    let c = &cfg.credentials;
    let values = [
        &c.access_key_id,
        &c.secret_access_key,
        &cfg.region,
        &cfg.endpoint,
    ];
    if values
        .into_iter()
        .chain(c.session_token.as_ref())
        .any(|v| v.contains(['\n', '\r']))
    {
        return Err(Error::invalid(
            "the S3 settings hold a line break: check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, \
             AWS_SESSION_TOKEN, the region and the endpoint",
        ));
    }
    let mut ini = Zeroizing::new(String::with_capacity(512));
    let mut line = |key: &str, value: &str| {
        ini.push_str(key);
        ini.push_str(" = ");
        ini.push_str(value);
        ini.push('\n');
    };
    line("[default]\naws_access_key_id", &c.access_key_id);
    line("aws_secret_access_key", &c.secret_access_key);
    line("region", &cfg.region);
    if let Some(token) = &c.session_token {
        line("aws_session_token", token);
    }
    if cfg.endpoint != format!("https://s3.{}.amazonaws.com", cfg.region) {
        line("endpoint_url", &cfg.endpoint);
    }
    Ok(ini)
}

/// Runs the `restore_command` exactly as PostgreSQL will: through `/bin/sh -c` with `%f` and
/// `%p` substituted, as the data directory's owner, with an empty environment (the command sets
/// the one `wal-fetch` gets), asking for `7FFFFFFF.history`, which no vault holds (it unlocks
/// the credential, reaches the sites, then answers "not there" quietly). A site or file that
/// user cannot reach would otherwise make recovery fail later, when PostgreSQL's own hint
/// (remove `backup_label`) would corrupt the restored cluster.
fn preflight(command: &str, owner: Option<(u32, u32)>) -> Result<()> {
    let probe = std::env::temp_dir().join("embassy-preflight-never-written");
    let shell =
        restore::expand_restore_command(command, "7FFFFFFF.history", &probe.to_string_lossy());
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(&shell)
        .env_clear()
        .current_dir("/")
        .stdin(std::process::Stdio::null());
    if let Some((uid, gid)) = owner.filter(|(uid, _)| *uid != current_uid()) {
        use std::os::unix::process::CommandExt;
        cmd.uid(uid).gid(gid);
    }
    let out = cmd
        .output()
        .map_err(|e| Error::io("running /bin/sh for the restore_command", e))?;
    // Exit 1 without a message is wal-fetch's quiet "not in the vault": keys and site worked.
    if out.status.success() || (out.status.code() == Some(1) && out.stderr.trim_ascii().is_empty())
    {
        return Ok(());
    }
    Err(Error::invalid(format!(
        "PostgreSQL's restore_command would fail: `embassy wal-fetch`, run as the data \
         directory's owner (uid {}) with the environment the server gives it (none but what the \
         command sets), says: {}; make the site (its folder, or the network and S3 keys) and \
         this program readable by that user, or restore with --owner; nothing was restored",
        owner.map_or(current_uid(), |o| o.0),
        String::from_utf8_lossy(&out.stderr).trim().escape_debug()
    )))
}

pub(crate) fn current_uid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// The sites of the restore_command (absolute paths), and `--min-sites`.
fn restore_program(setup: &FetchSetup) -> Result<Vec<String>> {
    let mut args = Vec::new();
    for site in &setup.sites {
        args.push("--site".to_string());
        if site.contains("://") {
            args.push(site.clone());
        } else {
            let p = Path::new(site);
            args.push(
                std::path::absolute(p)
                    .map(|a| a.display().to_string())
                    .map_err(|e| Error::io(format!("resolving {}", p.display()), e))?,
            );
        }
    }
    if let Some(min) = setup.min_sites {
        args.push("--min-sites".into());
        args.push(min.to_string());
    }
    Ok(args)
}

/// uid and gid of a user name (or a number).
pub fn owner(name: Option<&str>) -> Result<Option<(u32, u32)>> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let name = match name {
        Some(n) => n,
        None if root => "postgres",
        None => return Ok(None),
    };
    let c = std::ffi::CString::new(name)
        .map_err(|_| Error::invalid("the owner's name has a NUL byte"))?;
    // SAFETY: c is a valid C string; getpwnam returns NULL or a pointer to static storage we
    // read at once, on this thread, before any other passwd call.
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    if pw.is_null() {
        return Err(Error::invalid(format!(
            "no user {name} on this machine: pass --owner USER, the user PostgreSQL runs as"
        )));
    }
    // SAFETY: pw is non-null and points to a valid passwd record (see above).
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok(Some((uid, gid)))
}
