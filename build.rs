//! Names the build the binary is: `BREAKGLASS_BUILD`, the commit it was built from (`git
//! rev-parse`, in this crate's own repository), or `BREAKGLASS_BUILD_ID` when set (an image
//! built from a copy without its repository; letters, digits, `.` and `-`), else `unknown`.
//! The service logs it with each start and shows it in `/metrics` (`breakglass_build_info`),
//! so that which build each replica ran can be told. A build from a tree whose compiled parts
//! (`BUILT_FROM`) had changes not committed (or whose state git could not tell) is marked so:
//! `<commit>.modified`.

use std::path::{Path, PathBuf};
use std::process::Command;

const ID_ENV: &str = "BREAKGLASS_BUILD_ID";

/// What the binary is built from (the crate's sources and what they include): a change to
/// any of them not committed marks the build `.modified`.
const BUILT_FROM: [&str; 7] = [
    "src",
    "static",
    "templates",
    "policies",
    "build.rs",
    "Cargo.toml",
    "Cargo.lock",
];

/// `git -C <this crate> <args>`, its output trimmed, if it succeeded (empty or not).
fn git_said(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    out.status.success().then_some(text)
}

/// `git_said`, when it said something.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    git_said(dir, args).filter(|text| !text.is_empty())
}

fn main() {
    println!("cargo:rerun-if-env-changed={ID_ENV}");
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let given = std::env::var(ID_ENV).ok().filter(|id| !id.is_empty());
    if let Some(id) = &given {
        assert!(
            id.len() <= 64
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'),
            "{ID_ENV} may hold letters, digits, '.' and '-' (64 at most), not {id:?}"
        );
    }
    // only this crate's own repository (not one it was copied into)
    let ours = git(&dir, &["rev-parse", "--show-toplevel"])
        .is_some_and(|top| Path::new(&top).canonicalize().ok() == dir.canonicalize().ok());
    let commit = ours
        .then(|| git(&dir, &["rev-parse", "--short=12", "HEAD"]))
        .flatten()
        .map(|commit| {
            // (untracked files count: a new module is compiled before it is committed; the
            // index is not refreshed: a build writes nothing of git's)
            let mut status = vec![
                "--no-optional-locks",
                "status",
                "--porcelain",
                "--untracked-files=normal",
                "--",
            ];
            status.extend(BUILT_FROM);
            // (a tree whose state git could not tell is not taken for the commit)
            match git_said(&dir, &status) {
                Some(changes) if changes.is_empty() => commit,
                _ => format!("{commit}.modified"),
            }
        });
    if ours {
        // run again when what is built changes (then whether it is committed is asked again)
        for part in BUILT_FROM {
            println!("cargo:rerun-if-changed={}", dir.join(part).display());
        }
        // run again when the commit checked out changes: HEAD and its log, which every
        // commit, checkout and reset writes (in a worktree too, wherever git keeps them)
        for file in ["HEAD", "logs/HEAD"] {
            if let Some(path) = git(
                &dir,
                &["rev-parse", "--path-format=absolute", "--git-path", file],
            ) {
                if Path::new(&path).is_file() {
                    println!("cargo:rerun-if-changed={path}");
                }
            }
        }
    }
    let id = given.or(commit).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=BREAKGLASS_BUILD={id}");
    // (for the test that checks the id)
    println!(
        "cargo:rustc-env=BREAKGLASS_BUILT_FROM={}",
        BUILT_FROM.join(" ")
    );
}
