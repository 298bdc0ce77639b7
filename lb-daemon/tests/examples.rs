//! Every YAML file in examples/ passes `lbd --check` as shipped, and a broken one fails
//! with FILE:LINE:COLUMN, through the real binary.

use std::path::Path;
use std::process::Command;

fn check(path: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lbd"))
        .arg("--config")
        .arg(path)
        .arg("--check")
        .output()
        .unwrap()
}

#[test]
fn examples_pass_check() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let out = check(&path);
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            seen += 1;
        }
    }
    assert!(seen >= 4, "examples missing from {} (dr, lab, nat, tunnel)", dir.display());
}

#[test]
fn a_broken_config_fails_check_with_its_location() {
    let dir = std::env::temp_dir().join(format!("lb-examples-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("broken.yaml");
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/director.yaml"),
    )
    .unwrap();
    std::fs::write(&path, text.replacen("forwarding: dr", "forwarding: gre", 1)).unwrap();
    let out = check(&path);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!(
            "{}:13:5: services[0].forwarding: unknown value `gre`",
            path.display()
        )),
        "{stderr}"
    );
}
