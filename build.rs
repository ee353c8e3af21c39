//! Records the git revision for `sluice_build_info` (and `sluice --version` readers).
fn main() {
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    let revision = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if let Some(r) = revision {
        println!("cargo:rustc-env=SLUICE_GIT_REVISION={r}");
    }
}
