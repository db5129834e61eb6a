//! `anatomy synth` end to end: the files it writes load with the trainer's loader, `--json` prints
//! the summary, and bad flags fail with a message instead of a panic.

use std::process::Command;

use anatomy_trainer::data::load;
use anatomy_trainer::synth::load_options;

fn synth(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_anatomy"))
        .arg("synth")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn writes_a_loadable_dataset_and_a_json_summary() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("set");
    let o = synth(&[
        "--out",
        out.to_str().unwrap(),
        "--count",
        "10",
        "--seed",
        "5",
        "--size",
        "64",
        "--holdout-fraction",
        "0.3",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["images"], 10);
    let (train, holdout) = (
        summary["train"].as_u64().unwrap() as usize,
        summary["holdout"].as_u64().unwrap() as usize,
    );
    assert_eq!((train, holdout), (7, 3));
    let all = load(out.join("questions.json"), &load_options(&out)).unwrap();
    assert_eq!(all.questions.len(), train + holdout);
    assert!(all
        .questions
        .iter()
        .all(|q| q.options.len() == 4 && q.image.is_file()));
    assert_eq!(std::fs::read_dir(out.join("images")).unwrap().count(), 10);
}

#[test]
fn bad_flags_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    for (flags, word) in [
        (vec!["--count", "0"], "count"),
        (vec!["--count", "2", "--size", "16"], "size"),
        (vec!["--count", "2", "--size", "100000"], "size"),
        (vec!["--count", "2", "--holdout-fraction", "2"], "holdout"),
    ] {
        let mut args = vec!["--out", out];
        args.extend(flags);
        let o = synth(&args);
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(word) && !err.contains("panicked"), "{err}");
    }
}
