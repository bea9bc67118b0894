//! The shipped unit file passes `systemd-analyze verify` (with ExecStart pointed at the
//! binary this build produced, since verify checks that the binary exists).
#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn unit_file_verifies() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../systemd/ingestd.service"
    ))
    .unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/ingestd serve"));
    for required in [
        "Type=notify",
        "WatchdogSec=",
        "LimitNOFILE=",
        "LimitMEMLOCK=",
        "User=ingestd",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/ingestd",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
    ] {
        assert!(unit.contains(required), "unit lacks {required}");
    }
    let unit = unit.replace("/usr/local/bin/ingestd", env!("CARGO_BIN_EXE_ingestd"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ingestd.service");
    std::fs::write(&path, unit).unwrap();
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze must be installed (scripts/test installs it)");
    assert!(
        output.status.success(),
        "systemd-analyze verify failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // verify exits 0 on unknown keys and unparsable values, only warning about them.
    let warnings = String::from_utf8_lossy(&output.stderr);
    assert!(
        warnings.trim().is_empty(),
        "systemd-analyze verify warned:\n{warnings}"
    );
}
