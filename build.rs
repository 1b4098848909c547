//! Names the build the binary is: `BREAKGLASS_BUILD`, the commit it was built from (`git
//! rev-parse`), or `BREAKGLASS_BUILD_ID` when set (an image built from a copy without its
//! repository), else `unknown`. The service logs it with each start and shows it in
//! `/metrics` (`breakglass_build_info`), so that which build each replica ran can be told.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=BREAKGLASS_BUILD_ID");
    // run again when the commit checked out changes: HEAD, and the branch it names (a file of
    // its own, or a line of packed-refs); only files that are there (one that is not would
    // make every build run this again)
    let git = Path::new(".git");
    let mut watched = vec![git.join("HEAD"), git.join("packed-refs")];
    if let Ok(head) = std::fs::read_to_string(git.join("HEAD")) {
        if let Some(branch) = head.trim().strip_prefix("ref: ") {
            watched.push(git.join(branch));
        }
    }
    for file in watched.iter().filter(|f| f.is_file()) {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let id = std::env::var("BREAKGLASS_BUILD_ID")
        .ok()
        .filter(|id| !id.is_empty())
        .or_else(|| {
            let out = Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()?;
            let id = String::from_utf8(out.stdout).ok()?.trim().to_string();
            (out.status.success() && !id.is_empty()).then_some(id)
        })
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=BREAKGLASS_BUILD={id}");
}
