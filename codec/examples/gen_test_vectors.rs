//! Writes docs/test-vectors.json to stdout:
//! `cargo run -p ingestd-codec --example gen_test_vectors > docs/test-vectors.json`.

fn main() {
    print!("{}", ingestd_codec::envelope::test_vectors::generate());
}
