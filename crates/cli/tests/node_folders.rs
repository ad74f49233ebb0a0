//! The embassy node never removes a folder that is not a standby's (red team 8): a mistyped
//! `[[standbys]] data_dir` naming the vault's own site folder, or `.` (the configuration's
//! folder, with the root key file), was removed by the node's first "rebuild" of an
//! "incomplete" data directory. Now such a folder is left as it is, the standby is shown down
//! with the reason, and the vault still verifies.

use std::time::Duration;

use embassy_testkit::agent::Agent;
use embassy_testkit::pg::cli::{arg, PgCli};
use embassy_testkit::wait_until;

const EXE: &str = env!("CARGO_BIN_EXE_embassy");

#[test]
fn a_data_dir_naming_a_folder_of_other_files_is_never_removed() {
    let env = PgCli::new(EXE, "embassy-nodefolders-");
    let site = env.site();
    let config_before = std::fs::read(site.join("config")).expect("the vault's config");
    let (port_a, port_b) = (embassy_testkit::free_port(), embassy_testkit::free_port());
    std::fs::write(
        env.path("embassy.toml"),
        format!(
            "[agent]\nstate_dir = \"agent-state\"\nverify_interval = \"never\"\n\
             [keys]\nfile = \"vault.key\"\npassphrase_file = \"pass\"\n\
             [[sites]]\nname = \"home\"\npath = \"{}\"\n\
             [[standbys]]\ndataset = \"registry\"\ndata_dir = \"{}\"\nport = {port_a}\n\
             [[standbys]]\ndataset = \"gazette\"\ndata_dir = \".\"\nport = {port_b}\n",
            arg(&site),
            arg(&site)
        ),
    )
    .expect("write embassy.toml");
    let agent = Agent::start_in(EXE, env.dir.path());
    wait_until("both standbys refused", Duration::from_secs(60), || {
        agent.log().matches("is never removed").count() >= 2
    });
    // A few more ticks: still nothing removed.
    std::thread::sleep(Duration::from_secs(3));
    let (_, log) = agent.stop(Duration::from_secs(30));
    assert!(!log.contains("removing"), "{log}");
    assert_eq!(
        std::fs::read(site.join("config")).expect("the vault's config is still there"),
        config_before
    );
    for kept in ["embassy.toml", "vault.key", "pass"] {
        assert!(env.path(kept).exists(), "{kept} was removed; log:\n{log}");
    }
    let verified = env.output(&["verify"]);
    assert!(
        verified.status.success(),
        "the vault does not verify after the node ran: {}",
        String::from_utf8_lossy(&verified.stdout)
    );
}

/// Kills and reaps a process when dropped, also when the test fails.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A data directory a process of its old server still works in (a killed server's backend,
/// here a program named `postgres` whose working folder it is) is not removed under it: the
/// node's rebuild waits, says why, and the folder stays (seen removed without the check).
#[test]
fn a_data_dir_an_old_server_still_works_in_is_not_removed_under_it() {
    use std::os::unix::fs::MetadataExt;
    let env = PgCli::new(EXE, "embassy-nodefolders-busy-");
    let data_dir = env.path("node-registry");
    std::fs::create_dir_all(&data_dir).expect("create the data directory");
    let inode = std::fs::metadata(&data_dir).expect("its metadata").ino();
    // A backend of the old server: `sleep` under the name PostgreSQL's processes have.
    let backend = env.path("postgres");
    std::fs::copy("/bin/sleep", &backend).expect("copy sleep");
    let _backend = Reaped(
        std::process::Command::new(&backend)
            .arg("600")
            .current_dir(&data_dir)
            .spawn()
            .expect("start the fake backend"),
    );
    let port = embassy_testkit::free_port();
    std::fs::write(
        env.path("embassy.toml"),
        format!(
            "[agent]\nstate_dir = \"agent-state\"\nverify_interval = \"never\"\n\
             [keys]\nfile = \"vault.key\"\npassphrase_file = \"pass\"\n\
             [[sites]]\nname = \"home\"\npath = \"{}\"\n\
             [[standbys]]\ndataset = \"registry\"\ndata_dir = \"{}\"\nport = {port}\n",
            arg(&env.site()),
            arg(&data_dir)
        ),
    )
    .expect("write embassy.toml");
    let agent = Agent::start_in(EXE, env.dir.path());
    wait_until("the rebuild refused", Duration::from_secs(60), || {
        agent.log().contains("it is not removed under them")
    });
    let (_, log) = agent.stop(Duration::from_secs(30));
    assert_eq!(
        std::fs::metadata(&data_dir).map(|m| m.ino()).ok(),
        Some(inode),
        "the data directory was removed under its old server's process; log:\n{log}"
    );
}
