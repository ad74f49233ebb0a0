//! The embassy node never removes a folder that is not a standby's (red team 8): a mistyped
//! `[[standbys]] data_dir` naming the vault's own site folder, or `.` (the configuration's
//! folder, with the root key file), was removed by the node's first "rebuild" of an
//! "incomplete" data directory. Now the configuration check refuses those before anything runs,
//! and a data directory naming any other folder of other files is left as it is at run time:
//! the standby is shown down with the reason, and the vault still verifies.

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
    let write_config = |a: &str, b: &str| {
        std::fs::write(
            env.path("embassy.toml"),
            format!(
                "[agent]\nstate_dir = \"agent-state\"\nverify_interval = \"never\"\n\
                 [keys]\nfile = \"vault.key\"\npassphrase_file = \"pass\"\n\
                 [[sites]]\nname = \"home\"\npath = \"{}\"\n\
                 [[standbys]]\ndataset = \"registry\"\ndata_dir = \"{a}\"\nport = {port_a}\n\
                 [[standbys]]\ndataset = \"gazette\"\ndata_dir = \"{b}\"\nport = {port_b}\n",
                arg(&site),
            ),
        )
        .expect("write embassy.toml")
    };
    // The vault's own site folder and `.`: refused by the configuration check, nothing runs.
    write_config(arg(&site), ".");
    let check = env.output(&["config", "check", arg(&env.path("embassy.toml"))]);
    let said = String::from_utf8_lossy(&check.stderr).to_string()
        + &String::from_utf8_lossy(&check.stdout);
    assert!(!check.status.success(), "{said}");
    assert!(
        said.contains("standbys[0].data_dir") && said.contains("standbys[1].data_dir"),
        "{said}"
    );
    // Folders of other files the check cannot know of: never removed at run time.
    let papers = env.path("papers");
    let letters = env.path("letters");
    for (dir, file) in [(&papers, "minutes.txt"), (&letters, "letter.txt")] {
        std::fs::create_dir_all(dir).expect("create a folder of other files");
        std::fs::write(dir.join(file), "keep me").expect("write a file");
    }
    write_config(arg(&papers), arg(&letters));
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
    for kept in [
        env.path("embassy.toml"),
        env.path("vault.key"),
        env.path("pass"),
        papers.join("minutes.txt"),
        letters.join("letter.txt"),
    ] {
        assert!(kept.exists(), "{} was removed; log:\n{log}", kept.display());
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
