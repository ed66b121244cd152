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
    // One node holds one replica: asking for more is a clear error, and creates nothing.
    let out = rill(
        b,
        &["topic", "create", "wide", "--replication-factor", "3"],
        "",
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("replication factor 3 needs a cluster"),
        "{err}"
    );
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
    assert_eq!(line.trim_end(), "rilld kafka listening on 127.0.0.1:9092");
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

#[test]
fn consume_formats_produce_from_a_file_and_json_output_for_scripts() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    let b = Some(broker.addr());
    stdout(&rill(
        b,
        &[
            "topic",
            "create",
            "fmt",
            "--partitions",
            "1",
            "--retention-ms",
            "3600000",
        ],
        "",
    ));
    let file = dir.path().join("input.txt");
    std::fs::write(&file, "alpha:1\nbeta:\"quoted\"\n").unwrap();
    stdout(&rill(
        b,
        &[
            "produce",
            "fmt",
            "--key-separator",
            ":",
            "--file",
            file.to_str().unwrap(),
        ],
        "",
    ));
    // One record with headers, through the library.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = rill_client::Client::connect(broker.addr()).await.unwrap();
        let producer = rill_client::Producer::new(client, rill_client::ProducerConfig::default());
        let record = rill_client::ProducerRecord::new("fmt", "with headers")
            .key("gamma")
            .header("trace-id", "abc")
            .timestamp(1_700_000_000_000);
        let delivery = producer.send(record).await.unwrap();
        producer.flush().await.unwrap();
        delivery.await.unwrap();
    });

    let kv = stdout(&rill(
        b,
        &[
            "consume",
            "fmt",
            "--from-beginning",
            "--count",
            "2",
            "--format",
            "key-value",
        ],
        "",
    ));
    assert_eq!(kv, "alpha=1\nbeta=\"quoted\"\n");

    let json = stdout(&rill(
        b,
        &[
            "consume",
            "fmt",
            "--from-beginning",
            "--count",
            "3",
            "--format",
            "json",
        ],
        "",
    ));
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(lines.len(), 3);
    for (i, line) in lines.iter().enumerate() {
        for field in [
            "topic",
            "partition",
            "offset",
            "key",
            "value",
            "headers",
            "timestamp",
        ] {
            assert!(line.get(field).is_some(), "line {i} lacks {field}: {line}");
        }
        assert_eq!(line["topic"], "fmt");
        assert_eq!(line["partition"], 0);
        assert_eq!(line["offset"], i as u64);
    }
    assert_eq!(lines[1]["value"], "\"quoted\"", "quotes survive as data");
    assert_eq!(lines[2]["key"], "gamma");
    assert_eq!(lines[2]["headers"]["trace-id"], "abc");
    assert_eq!(lines[2]["timestamp"], 1_700_000_000_000i64);

    let described: serde_json::Value = serde_json::from_str(&stdout(&rill(
        b,
        &["--json", "topic", "describe", "fmt"],
        "",
    )))
    .unwrap();
    assert_eq!(described["partitions"][0]["log_end_offset"], 3);
    assert_eq!(
        described["partitions"][0]["durable_offset"], 3,
        "fsync=always: everything acknowledged is on disk"
    );
    assert_eq!(described["config"]["retention_ms"], 3_600_000);
    let listed: serde_json::Value =
        serde_json::from_str(&stdout(&rill(b, &["topic", "list", "--json"], ""))).unwrap();
    assert_eq!(listed[0]["name"], "fmt");
}

/// The bug: `rill ... | head -1` panicked with a backtrace once `head` closed the pipe, because
/// writing to a closed stdout is an error Rust's `println!` turns into a panic.
#[test]
fn a_closed_output_pipe_ends_rill_quietly() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    let b = Some(broker.addr());
    stdout(&rill(b, &["topic", "create", "lines"], ""));
    // More than a pipe buffer holds, so the writer is sure to meet the closed pipe.
    let lines: String = (0..20_000).map(|i| format!("{i:0>99}\n")).collect();
    stdout(&rill(b, &["produce", "lines", "--partition", "0"], &lines));

    for args in [
        vec!["consume", "lines", "--from-beginning", "--count", "20000"],
        vec![
            "consume",
            "lines",
            "--group",
            "g",
            "--from-beginning",
            "--count",
            "20000",
        ],
    ] {
        let mut child = Command::new(&rill_e2e::binaries().rill)
            .arg("--broker")
            .arg(broker.addr())
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        out.read_line(&mut first).unwrap();
        assert_eq!(first.trim_end(), format!("{:0>99}", 0));
        drop(out); // what `head -1` does after its line
        let done = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&done.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!stderr.contains("Broken pipe"), "{args:?}: {stderr}");
        assert_eq!(done.status.code(), Some(141), "{args:?}: {stderr}");
    }
}
