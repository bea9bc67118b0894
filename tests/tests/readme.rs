//! The README's first lines give the two commands, CI runs exactly the test one, and the
//! README points only at files inside the repository.

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{ROOT}/{path}")).unwrap_or_default()
}

#[test]
fn ci_runs_the_readme_test_command() {
    let readme = read("README.md");
    let head: String = readme.lines().take(30).collect::<Vec<_>>().join("\n");
    assert!(
        head.contains("scripts/test"),
        "README's first lines must give the test command"
    );
    assert!(
        head.contains("scripts/serve"),
        "README's first lines must give the main command, scripts/serve"
    );
    let ci = read(".ci/run");
    assert!(
        ci.lines().any(|l| l.trim() == "exec scripts/test"),
        ".ci/run must run scripts/test"
    );
}

/// The main command builds, provisions when needed, and ends in `ingestd serve` with the
/// script's arguments; and it installs cmake, without which librdkafka does not build.
#[test]
fn main_command_script_installs_builds_provisions_and_serves() {
    let script = read("scripts/serve");
    for needle in [
        "cmake",
        "libssl-dev",
        "cargo build --release",
        "devices provision --count 10 --out devices",
        "exec \"$ingestd\" serve \"$@\"",
    ] {
        assert!(script.contains(needle), "scripts/serve lacks `{needle}`");
    }
}

/// Every `docs/` or `scripts/` path the README names exists here; nothing points outside.
#[test]
fn readme_points_only_inside_the_repository() {
    let readme = read("README.md");
    assert!(
        !readme.contains("../"),
        "README points outside the repository"
    );
    let path_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-');
    for word in readme.split(|c: char| !path_char(c)) {
        let word = word.trim_end_matches('.');
        if word.starts_with("docs/") || word.starts_with("scripts/") {
            assert!(
                std::path::Path::new(&format!("{ROOT}/{word}")).exists(),
                "README names {word}, which does not exist"
            );
        }
    }
}
