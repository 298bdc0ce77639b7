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
            let said = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{}: {said}", path.display());
            // As shipped, without a warning: a check that cannot see its service in an
            // example would teach the mistake.
            assert!(!said.contains("warning:"), "{}: {said}", path.display());
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
    // The first service's `forwarding` line, wherever the example has it.
    let line = text.lines().position(|l| l.contains("forwarding: dr")).unwrap() + 1;
    assert!(
        stderr.starts_with(&format!(
            "{}:{line}:5: services[0].forwarding: unknown value `gre`",
            path.display()
        )),
        "{stderr}"
    );
}

/// Files a hostile user might hand lbd: each is refused with exit 1 (never a panic's 101)
/// and a located problem, at once. The 100,000-deep file took 57 s (a debug build) before
/// the depth was bounded.
#[test]
fn hostile_files_are_refused_at_once_with_their_location() {
    let dir = std::env::temp_dir().join(format!("lb-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/director.yaml"),
    )
    .unwrap();
    let deep = 100_000;
    let files: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "deep.yaml",
            format!("director: {}{}\n", "[".repeat(deep), "]".repeat(deep)).into_bytes(),
            ":1:266: director: collections nested more than 64 deep",
        ),
        (
            "deep-block.yaml",
            format!("{}x\n", "- ".repeat(deep)).into_bytes(),
            ":1:129: collections nested more than 64 deep",
        ),
        (
            "duration.yaml",
            good.replacen("interval: 2s", "interval: 99999999999999999999s", 1).into_bytes(),
            "check.interval: `99999999999999999999s` is longer than 1h",
        ),
        (
            "huge.yaml",
            format!("{good}#{}\n", "x".repeat(17 << 20)).into_bytes(),
            ":1:1: the file is larger than 16 MiB",
        ),
        ("latin1.yaml", [good.as_bytes(), b"# r\xe9seau\n"].concat(), "not UTF-8: byte 0xe9"),
    ];
    for (name, bytes, want) in files {
        let path = dir.join(name);
        std::fs::write(&path, &bytes).unwrap();
        let started = std::time::Instant::now();
        let out = check(&path);
        let took = started.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(stderr.starts_with(&path.display().to_string()), "{name}: {stderr}");
        assert!(stderr.contains(want), "{name}: {stderr}");
        assert!(took < std::time::Duration::from_secs(2), "{name}: {took:?}");
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "lbd --check {name} ({} bytes): exit 1 in {took:.1?}",
            bytes.len()
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// examples/lbd.service is a unit systemd accepts (`systemd-analyze verify`, with its
/// paths pointed at this build's lbd), and it runs what the README says.
#[test]
fn the_systemd_unit_is_one_systemd_accepts() {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/lbd.service"),
    )
    .unwrap();
    assert!(
        unit.contains("Type=notify") && unit.contains("ExecReload=/usr/local/sbin/lbadm reload")
    );
    assert!(unit.contains("--config /etc/lbd/lbd.yaml --check"), "{unit}");
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        eprintln!("skipped: systemd-analyze is not installed, so the unit is not verified");
        return;
    }
    let dir = std::env::temp_dir().join(format!("lb-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lbd.service");
    let built = unit
        .replace("/usr/local/sbin/lbadm", env!("CARGO_BIN_EXE_lbadm"))
        .replace("/usr/local/sbin/lbd", env!("CARGO_BIN_EXE_lbd"));
    std::fs::write(&path, built).unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&path).output().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    // It exits 0 even for a key it ignores, and says so on stderr: nothing must be said.
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");
}
