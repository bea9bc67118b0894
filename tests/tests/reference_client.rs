//! The protocol is implementable outside this codebase: the Python reference checker,
//! written from docs/PROTOCOL.md against the `cryptography` package, agrees with every case
//! of docs/test-vectors.json.

use std::process::Command;

#[test]
fn python_reference_checker_agrees_with_every_vector() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let output = Command::new("python3")
        .arg(format!("{root}/docs/reference/python/ingestd_vectors.py"))
        .arg(format!("{root}/docs/test-vectors.json"))
        .output()
        .expect("python3 must be installed");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "reference checker failed:\n{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("cases match"), "{stdout}");
}
