//! A short seeded run on a real 3-node lab cluster: kills, pauses and partitions while clients on every
//! node read, write and compare-and-set registers through the API; the recorded history is
//! linearizable and the cluster kept answering between faults.

use std::process::Command;

#[test]
fn a_seeded_run_with_kills_pauses_and_partitions_records_a_linearizable_history() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "flotilla-chaos run needs root for the lab's network namespaces (CI runs as root)"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_flotilla-chaos"))
        .args(["run", "--nodes", "3", "--seed", "7", "--duration", "25s"])
        .args(["--faults", "kill,pause,partition", "--report"])
        .arg(dir.path())
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(report["register"]["linearizable"], true, "{report:#}");
    let faults = report["faults"].as_array().unwrap();
    assert!(faults.len() >= 3, "the nemesis struck: {report:#}");
    // Operations completed, also after the first fault.
    let history = std::fs::read_to_string(dir.path().join("history.edn")).unwrap();
    let first_fault = faults[0]["endSeconds"].as_f64().unwrap();
    let later_ok = history
        .lines()
        .filter(|l| l.contains(":type :ok,"))
        .filter_map(|l| {
            l.rsplit_once(":time ")?
                .1
                .trim_end_matches('}')
                .parse::<f64>()
                .ok()
        })
        .filter(|t| *t > first_fault)
        .count();
    assert!(
        report["register"]["operations"]["ok"].as_u64().unwrap() > 100 && later_ok > 20,
        "{later_ok} operations completed after the first fault: {report:#}"
    );
    // The checker reads what was recorded on its own, with the same verdict.
    let check = Command::new(env!("CARGO_BIN_EXE_flotilla-chaos"))
        .args(["check", "--format", "register"])
        .arg(dir.path().join("history.edn"))
        .output()
        .unwrap();
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    // And it would have seen a read of a value nobody wrote: the recorded history is what
    // the verdict is about.
    let mut lines: Vec<String> = history.lines().map(str::to_string).collect();
    let read = lines
        .iter()
        .position(|l| l.contains(":type :ok, :f :read,") && !l.contains(":value nil,"))
        .expect("a read that saw a value");
    let (head, tail) = lines[read].split_once(":value ").unwrap();
    let rest = tail.split_once(',').unwrap().1;
    lines[read] = format!("{head}:value 999999999,{rest}");
    let forged = dir.path().join("forged.edn");
    std::fs::write(&forged, lines.join("\n")).unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_flotilla-chaos"))
        .args(["check", "--format", "register"])
        .arg(&forged)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(1), "{out}");
    assert!(
        out.contains("999999999"),
        "the witness names the forged read: {out}"
    );
}
