//! The `heels` command line as a user meets it: help on every subcommand,
//! errors in one line that name the cause, and exit statuses that say what
//! failed (0 success, 1 failed, 2 command line, 3 configuration, 4 no
//! such instance). No root needed.

use std::process::{Command, Output};

fn heels(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_heels")).args(args).output().expect("heels runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn every_subcommand_has_help_in_one_line_each() {
    let top = heels(&["--help"]);
    assert!(top.status.success());
    let text = String::from_utf8(top.stdout).unwrap();
    for sub in ["agent", "down", "status", "conns", "stats", "lab"] {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(sub))
            .unwrap_or_else(|| panic!("{sub} in\n{text}"));
        assert!(line.len() > sub.len() + 10, "{sub} has a one-line description: {line:?}");
        assert!(heels(&[sub, "--help"]).status.success(), "heels {sub} --help");
    }
    assert!(text.contains("Examples:") && text.contains("Exit status"), "{text}");
}

#[test]
fn exit_statuses_say_what_failed() {
    let dir = std::env::temp_dir().join(format!("heels-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "instance = \"a\"\ninterfaces = [\"eth0\"]\nsweep_seconds = \"x\"\n").unwrap();
    let cases: [(&[&str], i32, &str); 5] = [
        (&["agent", "--check-config", concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/heels.toml")], 0, ""),
        (&["bogus"], 2, "unrecognized subcommand"),
        (&["agent", "--check-config", bad.to_str().unwrap()], 3, "field `sweep_seconds` (line 3, column 17)"),
        (&["agent", "--check-config", "/nonexistent/heels.toml"], 3, "reading /nonexistent/heels.toml"),
        (&["stats", "--instance", "no-such-instance-here"], 4, "no heels instance \"no-such-instance-here\""),
    ];
    for (args, status, message) in cases {
        let output = heels(args);
        assert_eq!(output.status.code(), Some(status), "heels {args:?}: {}", stderr(&output));
        let text = stderr(&output);
        assert!(text.contains(message), "heels {args:?}: {text}");
        if status == 1 || status >= 3 {
            assert_eq!(text.trim_end().lines().count(), 1, "one line: {text}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
