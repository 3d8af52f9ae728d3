//! Tidy checks on the source tree itself (run with the unit tests): every
//! file says what it owns, pure cores stay pure, domains stay apart.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("readable source directory") {
        let path = entry.expect("readable entry").path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The code before the first `#[cfg(test)]` (tests may use anything).
fn production_part(text: &str) -> &str {
    text.split("#[cfg(test)]").next().unwrap_or(text)
}

#[test]
fn every_file_starts_with_a_module_comment() {
    let missing: Vec<_> = rust_files(&src())
        .into_iter()
        .filter(|p| !std::fs::read_to_string(p).unwrap().starts_with("//!"))
        .collect();
    assert!(
        missing.is_empty(),
        "files without a leading //! comment: {missing:?}"
    );
}

#[test]
fn pure_cores_do_no_io() {
    const FORBIDDEN: [&str; 12] = [
        "tokio",
        "reqwest",
        "async ",
        ".await",
        "std::fs",
        "std::net",
        "Instant",
        "SystemTime",
        "crate::couch",
        "crate::cache",
        "crate::http",
        "crate::feeds",
    ];
    let domains = src().join("domains");
    let mut cores: Vec<_> = rust_files(&domains)
        .into_iter()
        .filter(|p| p.ends_with("model.rs"))
        .collect();
    // Pure cores outside the domains.
    cores.push(src().join("amqp/message.rs"));
    assert!(
        !cores.is_empty(),
        "every domain has a pure core in model.rs"
    );
    for core in cores {
        let text = std::fs::read_to_string(&core).unwrap();
        for word in FORBIDDEN {
            assert!(
                !production_part(&text).contains(word),
                "{} is a pure core but uses {word:?}",
                core.display()
            );
        }
    }
}

#[test]
fn domains_do_not_import_each_other() {
    let domains = src().join("domains");
    let names: Vec<String> = std::fs::read_dir(&domains)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for name in &names {
        for file in rust_files(&domains.join(name)) {
            let text = std::fs::read_to_string(&file).unwrap();
            for other in names.iter().filter(|o| *o != name) {
                let import = format!("domains::{other}");
                assert!(
                    !text.contains(&import),
                    "{} imports the {other} domain",
                    file.display()
                );
            }
        }
    }
}
