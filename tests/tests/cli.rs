//! Acceptance: the `rill` command-line contract that scripts rely on.

use rill_e2e::{Broker, rill};
use std::collections::BTreeMap;

fn stdout(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "rill failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn topics_produce_and_consume_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    let b = Some(broker.addr());

    stdout(&rill(
        b,
        &["topic", "create", "clicks", "--partitions", "3"],
        "",
    ));
    assert_eq!(stdout(&rill(b, &["topic", "list"], "")), "clicks\t3\n");

    let lines: String = (0..30)
        .map(|i| format!("user-{}:click-{i}\n", i % 4))
        .collect();
    let out = rill(b, &["produce", "clicks", "--key-separator", ":"], &lines);
    stdout(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("produced 30 record(s)"));

    // All partitions, from the beginning, exactly --count records.
    let all = stdout(&rill(
        b,
        &["consume", "clicks", "--from-beginning", "--count", "30"],
        "",
    ));
    let mut got: Vec<&str> = all.lines().collect();
    got.sort();
    let mut want: Vec<String> = (0..30).map(|i| format!("click-{i}")).collect();
    want.sort();
    assert_eq!(got, want);

    // Per partition: produce order is kept, and each key (user) lives in one partition.
    let describe = stdout(&rill(b, &["topic", "describe", "clicks"], ""));
    let mut ends = BTreeMap::new();
    for line in describe.lines().skip(2) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        ends.insert(cols[0].to_string(), cols[2].parse::<u64>().unwrap());
    }
    assert_eq!(ends.values().sum::<u64>(), 30);
    let mut owner = BTreeMap::new();
    for (p, end) in ends.iter().filter(|(_, end)| **end > 0) {
        let count = end.to_string();
        let values = stdout(&rill(
            b,
            &[
                "consume",
                "clicks",
                "--partition",
                p,
                "--offset",
                "0",
                "--count",
                &count,
            ],
            "",
        ));
        let numbers: Vec<u32> = values
            .lines()
            .map(|v| v.trim_start_matches("click-").parse().unwrap())
            .collect();
        assert!(
            numbers.windows(2).all(|w| w[0] < w[1]),
            "partition {p} out of order: {numbers:?}"
        );
        for n in numbers {
            let first = owner.entry(n % 4).or_insert(p.clone());
            assert_eq!(first, p, "user-{} appears in two partitions", n % 4);
        }
    }

    // --offset skips what came before.
    let (p, _) = ends
        .iter()
        .find(|(_, end)| **end >= 2)
        .expect("some partition holds two records");
    let tail = stdout(&rill(
        b,
        &[
            "consume",
            "clicks",
            "--partition",
            p,
            "--offset",
            "1",
            "--count",
            "1",
        ],
        "",
    ));
    let head = stdout(&rill(
        b,
        &[
            "consume",
            "clicks",
            "--partition",
            p,
            "--offset",
            "0",
            "--count",
            "2",
        ],
        "",
    ));
    assert_eq!(tail.lines().next(), head.lines().nth(1));

    // Errors are one clear line and a non-zero exit.
    let out = rill(b, &["topic", "create", "clicks"], "");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let out = rill(b, &["produce", "nowhere"], "x\n");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown topic 'nowhere'"));

    stdout(&rill(b, &["topic", "delete", "clicks"], ""));
    assert_eq!(stdout(&rill(b, &["topic", "list"], "")), "");
}

/// `rilld` with no arguments and `rill` with no `--broker` find each other. Uses the fixed
/// default port, so it is the only test that may start a broker without `--listen`.
#[test]
fn defaults_need_no_flags() {
    let dir = tempfile::tempdir().unwrap();
    let rilld = &rill_e2e::binaries().rilld;
    let mut child = std::process::Command::new(rilld)
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert_eq!(line.trim_end(), "rilld metrics listening on 127.0.0.1:7172");
    line.clear();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert!(
        line.starts_with("rilld listening on 127.0.0.1:7171, data in "),
        "{line}"
    );
    assert!(
        line.trim_end().ends_with("rill-data"),
        "data under the working directory: {line}"
    );
    let out = rill(None, &["topic", "create", "default-ok"], "");
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        dir.path()
            .join("rill-data/topics/default-ok/topic.meta")
            .exists()
    );
}
