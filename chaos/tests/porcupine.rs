//! The linearizability checker against histories with known verdicts (`testdata/porcupine`,
//! from etcd's Jepsen runs and porcupine's key-value tests): it must agree with every one,
//! including the many that are not linearizable. And `flotilla-chaos check`'s exit codes.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use flotilla_chaos::check::{check, Format};

fn data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/porcupine")
}

#[test]
fn every_jepsen_etcd_verdict_is_matched() {
    let verdicts = std::fs::read_to_string(data().join("jepsen/verdicts.tsv")).unwrap();
    let mut checked = (0, 0);
    for line in verdicts.lines().filter(|l| !l.trim().is_empty()) {
        let (file, expected) = line.split_once('\t').expect("FILE<TAB>VERDICT");
        let text = std::fs::read_to_string(data().join("jepsen").join(file)).unwrap();
        let started = Instant::now();
        let verdict =
            check(Format::Jepsen, &text, Duration::ZERO).unwrap_or_else(|e| panic!("{file}: {e}"));
        let linearizable = verdict.violation.is_none();
        eprintln!(
            "{file}: {} ops, {}, {:.1} ms",
            verdict.operations,
            if linearizable {
                "linearizable"
            } else {
                "not linearizable"
            },
            started.elapsed().as_secs_f64() * 1000.0
        );
        assert_eq!(
            linearizable,
            expected == "linearizable",
            "{file}: expected {expected}, the checker said {:?}",
            verdict.violation
        );
        if let Some((_, witness)) = &verdict.violation {
            assert!(!witness.is_empty(), "{file}: an empty witness");
        }
        if linearizable {
            checked.0 += 1;
        } else {
            checked.1 += 1;
        }
    }
    // The file lists both kinds: a checker that always says one thing fails here.
    assert!(checked.0 >= 10 && checked.1 >= 10, "{checked:?}");
}

#[test]
fn every_key_value_verdict_is_matched() {
    for clients in ["01", "10", "50"] {
        for (suffix, expected) in [("ok", true), ("bad", false)] {
            let file = format!("c{clients}-{suffix}.txt");
            let text = std::fs::read_to_string(data().join("kv").join(&file)).unwrap();
            let started = Instant::now();
            let verdict =
                check(Format::Kv, &text, Duration::ZERO).unwrap_or_else(|e| panic!("{file}: {e}"));
            eprintln!(
                "{file}: {} ops on {} keys, {:.1} ms",
                verdict.operations,
                verdict.keys,
                started.elapsed().as_secs_f64() * 1000.0
            );
            assert_eq!(
                verdict.violation.is_none(),
                expected,
                "{file}: {:?}",
                verdict.violation
            );
        }
    }
}

fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_flotilla-chaos"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_exits_0_when_linearizable_1_when_not_and_2_on_a_file_it_cannot_read() {
    let kv = data().join("kv");
    let ok = kv.join("c01-ok.txt");
    let (code, out, _) = run(&["check", "--format", "kv", ok.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(": linearizable ("), "{out}");

    let bad = kv.join("c10-bad.txt");
    let (code, out, _) = run(&["check", "--format", "kv", bad.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("NOT linearizable"), "{out}");
    // The witness: operations named by their lines.
    assert!(
        out.lines()
            .filter(|l| l.trim_start().starts_with("line "))
            .count()
            >= 2,
        "{out}"
    );

    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.txt");
    std::fs::write(
        &broken,
        "{:process 0, :type :invoke, :f :get, :key \"a\", :value nil}\n{:process 0, :type :ok, :f :get, :key \"a\", :value 12x}\n",
    )
    .unwrap();
    let (code, _, err) = run(&["check", "--format", "kv", broken.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("line 2:"), "{err}");
    // The wrong format for the file is a parse error too, not a verdict.
    let (code, _, err) = run(&["check", "--format", "jepsen", ok.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("line 1:"), "{err}");
    let (code, _, err) = run(&["check", "--format", "yaml", ok.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--format"), "{err}");
}
