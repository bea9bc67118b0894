//! The README's first lines give the two commands, and CI runs exactly the test one.

#[test]
fn ci_runs_the_readme_test_command() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap_or_default();
    let head: String = readme.lines().take(30).collect::<Vec<_>>().join("\n");
    assert!(
        head.contains("scripts/test"),
        "README's first lines must give the test command"
    );
    assert!(
        head.contains("ingestd -- serve") || head.contains("ingestd serve"),
        "README's first lines must give the main command"
    );
    let ci = std::fs::read_to_string(format!("{root}/.ci/run")).unwrap_or_default();
    assert!(
        ci.lines().any(|l| l.trim() == "exec scripts/test"),
        ".ci/run must run scripts/test"
    );
}
