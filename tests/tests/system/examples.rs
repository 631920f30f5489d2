//! The binaries' documented "Run with" examples work together as written.

/// Every `TOKEN_SECRET=...` in a binary's "Run with" block.
fn documented_secrets(main_rs: &str) -> Vec<String> {
    main_rs
        .lines()
        .take_while(|line| line.starts_with("//!"))
        .flat_map(|line| line.split_whitespace())
        .filter_map(|word| word.strip_prefix("TOKEN_SECRET="))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_run_with_examples_share_one_valid_token_secret() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let mut secrets = Vec::new();
    for service in ["gateway", "trips"] {
        let path = format!("{root}/services/{service}/src/main.rs");
        let text = std::fs::read_to_string(&path).unwrap();
        let found = documented_secrets(&text);
        assert!(!found.is_empty(), "{path} shows no TOKEN_SECRET");
        secrets.extend(found);
    }
    for secret in &secrets {
        assert!(
            secret.len() >= kit::cli::MIN_TOKEN_SECRET,
            "{secret:?} is shorter than the binaries accept"
        );
    }
    secrets.dedup();
    assert_eq!(
        secrets.len(),
        1,
        "the gateway's and the trips service's examples would not accept each other's tokens: {secrets:?}"
    );
}
