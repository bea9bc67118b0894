//! `shards/` is pure: no runtime, socket, file, thread or clock. This test reads the
//! crate's manifest and sources and refuses anything that would bring one in, so the
//! rule cannot erode unnoticed (a seeded simulation depends on it).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

/// Crates that are a runtime, do I/O or read the clock.
const FORBIDDEN_CRATES: [&str; 9] = [
    "glommio",
    "tokio",
    "async-std",
    "smol",
    "mio",
    "nix",
    "libc",
    "rdkafka",
    "reqwest",
];

/// Paths in the sources that reach a socket, a file, a thread or the clock.
const FORBIDDEN_PATHS: [&str; 12] = [
    "std::net::TcpStream",
    "std::net::TcpListener",
    "std::net::UdpSocket",
    "std::fs",
    "std::io::stdin",
    "std::time::Instant",
    "Instant::now",
    "SystemTime",
    "std::thread",
    "std::process",
    "std::env",
    "glommio::",
];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_manifest_has_no_runtime_or_io_dependency() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let dependencies = manifest
        .split("[dependencies]")
        .nth(1)
        .unwrap()
        .split("\n[")
        .next()
        .unwrap();
    for line in dependencies.lines() {
        let name = line.split(['=', ' ', '.']).next().unwrap_or("").trim();
        assert!(
            !FORBIDDEN_CRATES.contains(&name),
            "shards/Cargo.toml depends on {name}: the shard crate must stay pure"
        );
    }
}

#[test]
fn the_sources_reach_no_socket_file_thread_or_clock() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    assert!(
        files.len() > 5,
        "sources not found under {}",
        root.display()
    );
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for path in FORBIDDEN_PATHS {
                assert!(
                    !code.contains(path),
                    "{}:{}: `{path}` in the pure shard crate",
                    file.display(),
                    n + 1
                );
            }
        }
    }
}
