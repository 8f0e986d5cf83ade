//! The README is the user's manual: what it promises about errors must match
//! the code.

use azure_openai_image::error::ALL;

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md")
}

/// The rows of the README's error table: `(status, codes)` as written.
fn error_table() -> Vec<(String, String)> {
    let readme = readme();
    let section = readme
        .split("## Responses and errors")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a Responses and errors section");
    section
        .lines()
        .filter(|line| line.starts_with('|') && !line.starts_with("|---") && !line.starts_with("| case"))
        .filter_map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            (cells.len() == 3).then(|| (cells[1].to_owned(), cells[2].to_owned()))
        })
        .collect()
}

#[test]
fn every_code_the_connector_answers_is_in_the_readme_with_its_status() {
    let rows = error_table();
    assert!(rows.len() > 10, "the table was not found: {rows:?}");
    for spec in ALL {
        let quoted = format!("`{}`", spec.code);
        let row = rows
            .iter()
            .find(|(status, codes)| codes.contains(&quoted) && status.contains(&spec.status.to_string()));
        assert!(
            row.is_some(),
            "README's error table has no row with {quoted} and status {}",
            spec.status
        );
    }
}

#[test]
fn the_readme_names_no_code_the_connector_does_not_have() {
    let known: Vec<&str> = ALL.iter().map(|spec| spec.code).collect();
    for (_, codes) in error_table() {
        for code in codes.split('`').skip(1).step_by(2) {
            let header_or_param = code.contains(':') || code.contains('-') || code == "param" || code == "inner_error";
            assert!(
                known.contains(&code) || header_or_param,
                "README lists `{code}`, which error.rs does not have"
            );
        }
    }
}
