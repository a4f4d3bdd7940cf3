//! Apache Qpid's own Python client against the real `clacks serve`: the qpid.messaging
//! smoke, the broker conformance modules of `qpid_tests.broker_0_10`, and the
//! `qpid.tests.messaging` API tests. The Python side is installed by tests/qpid-setup.sh
//! (the README's test command runs it); a missing client fails these tests, never skips them.

mod common;

use std::process::Command;

use common::{qpidpy, Binary};

/// `pattern` of each line of tests/conformance-ignore.txt (the reason follows a `#`).
fn ignored() -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/conformance-ignore.txt");
    std::fs::read_to_string(path)
        .expect("ignore list")
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// The runner's totals line as (total, passed, skipped, ignored, failed).
fn totals(output: &str) -> (u32, u32, u32, u32, u32) {
    let line = output
        .lines()
        .rev()
        .find(|l| l.starts_with("Totals:"))
        .unwrap_or_else(|| panic!("no totals line in:\n{output}"));
    let nums: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("number"))
        .collect();
    assert_eq!(nums.len(), 5, "unexpected totals line: {line}");
    (nums[0], nums[1], nums[2], nums[3], nums[4])
}

fn run_suite(broker: &Binary, module: &str, patterns: &[String], ignore: &[String]) -> String {
    let mut cmd = Command::new(qpidpy().join("bin/qpid-python-test"));
    cmd.arg("-b").arg(broker.url()).arg("-m").arg(module);
    for i in ignore {
        cmd.arg("-i").arg(i);
    }
    cmd.args(patterns);
    let out = cmd.output().expect("run qpid-python-test");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn qpid_messaging_smoke() {
    let broker = Binary::start("");
    let out = Command::new(qpidpy().join("bin/qpid-smoke"))
        .arg(broker.url())
        .output()
        .expect("run qpid-smoke");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("SMOKE OK"),
        "smoke failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("content='hello'"),
        "text message echoed: {text}"
    );
}

#[test]
fn broker_0_10_conformance() {
    let broker = Binary::start("");
    let ignore = ignored();
    let out = run_suite(
        &broker,
        "qpid_tests.broker_0_10",
        &["qpid_tests.broker_0_10.*".to_string()],
        &ignore,
    );
    let (total, passed, skipped, ignored, failed) = totals(&out);
    assert!(
        failed == 0 && skipped == 0 && passed + ignored == total && passed >= 233,
        "conformance: {passed}/{total} passed, {skipped} skipped, {failed} failed\n{out}"
    );
}

/// The persistence module (run by name: the package does not import it).
#[test]
fn broker_0_10_persistence() {
    let broker = Binary::start("");
    let out = run_suite(
        &broker,
        "qpid_tests.broker_0_10.persistence",
        &["qpid_tests.broker_0_10.persistence.*".to_string()],
        &[],
    );
    let (total, passed, skipped, _, failed) = totals(&out);
    assert!(
        failed == 0 && skipped == 0 && passed == total && total == 3,
        "persistence: {passed}/{total} passed, {skipped} skipped, {failed} failed\n{out}"
    );
}

/// The echo tests compare the user-id they sent (none) with the one received, so this
/// broker runs with stamping off (`stamp_user_id = false`).
#[test]
fn qpid_messaging_api_tests() {
    let broker = Binary::start("stamp_user_id = false");
    let patterns = [
        "qpid.tests.messaging.endpoints.*".to_string(),
        "qpid.tests.messaging.message.*".to_string(),
    ];
    let out = run_suite(&broker, "qpid.tests", &patterns, &[]);
    let (total, passed, skipped, _, failed) = totals(&out);
    assert!(
        failed == 0 && skipped == 0 && passed == total && total > 100,
        "qpid.tests.messaging: {passed}/{total} passed, {skipped} skipped, {failed} failed\n{out}"
    );
}
