//! The short run of `grape-jepsen` on every change: a 3-node cluster (growing to 4 and back),
//! two rounds of every fault but the slow link, clients on every node, and the history
//! checked. The seed changes with every run (it is printed, and a failing history is saved
//! under target/tmp/jepsen/), so that CI explores new schedules over time; docs/verification.md
//! has the long run.

use std::process::Command;

#[test]
fn a_short_jepsen_run_finds_no_violation() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(1);
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("jepsen");
    let output = Command::new(env!("CARGO_BIN_EXE_grape-jepsen"))
        .args([
            "--nodes",
            "3",
            "--cycles",
            "16",
            "--seed",
            &seed.to_string(),
            // Every fault but the slow link, which shapes the machine's loopback device that
            // the tests running beside this one share (the long run has it).
            "--faults",
            "kill,pause,partition-one,partition-halves,bridge,transfer,membership,wipe",
        ])
        .arg("--out")
        .arg(&out)
        .output()
        .expect("grape-jepsen runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "seed {seed}: a violation or a cluster that did not recover (history under {}):\n{stdout}\n{stderr}",
        out.display()
    );
    // Every kind of fault ran, and the clients got work done through them.
    for fault in [
        "kill",
        "pause",
        "partition-one",
        "partition-halves",
        "bridge",
        "transfer",
        "membership",
        "wipe",
    ] {
        assert!(
            stdout.contains(&format!("| {fault} | 2 |")),
            "{fault} missing:\n{stdout}"
        );
    }
    assert!(stdout.contains("linearizability violations 0"), "{stdout}");
}
