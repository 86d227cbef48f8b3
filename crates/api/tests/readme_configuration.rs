//! The README's configuration table and the configuration agree: every variable the service
//! reads has a row, and every row names a variable it reads.

#[test]
fn every_variable_is_documented_and_every_documented_variable_is_read() {
    let readme = include_str!("../../../README.md");
    let table = readme
        .split("\n## Configuration\n")
        .nth(1)
        .expect("README has a Configuration section")
        .split("\n## ")
        .next()
        .unwrap();
    // The first column of each row: one or more `NAME`s.
    let documented: Vec<&str> = table
        .lines()
        .filter(|l| l.starts_with("| `"))
        .flat_map(|l| l.split('|').nth(1).unwrap_or_default().split(','))
        .map(|n| n.trim().trim_matches('`'))
        .collect();
    assert!(documented.len() > 50, "{documented:?}");
    for name in service::Config::VARIABLES {
        assert!(
            documented.contains(name),
            "{name} is read but has no row in README's Configuration table"
        );
    }
    for name in &documented {
        assert!(
            service::Config::VARIABLES.contains(name) || store::blobs::s3_reads_variable(name),
            "README documents {name}, which the service does not read"
        );
    }
}
