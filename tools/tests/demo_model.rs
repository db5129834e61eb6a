//! The README's first command against the committed demo model: `anatomy ask --image
//! demo/samples/<file> "What anatomy is at the top-left of the frame?" --options ... --json`
//! answers with one of the options and option probabilities that sum to one.
//!
//! It uses the demo directory the CLI uses by default (`$ANATOMY_DEMO_DIR`, else `demo/` at the
//! repository root) and does not skip: a checkout without the demo files fails here.

use std::path::PathBuf;
use std::process::Command;

const OPTIONS: [&str; 4] = ["Liver", "Gallbladder", "Omentum", "Gut"];

fn demo_dir() -> PathBuf {
    match std::env::var_os("ANATOMY_DEMO_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../demo")),
    }
}

#[test]
fn readme_first_command_answers_with_an_option() {
    let samples = demo_dir().join("samples");
    let mut images: Vec<PathBuf> = std::fs::read_dir(&samples)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (the demo model is not committed?)",
                samples.display()
            )
        })
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("png") || e.eq_ignore_ascii_case("jpg"))
        })
        .collect();
    images.sort();
    let image = images
        .first()
        .unwrap_or_else(|| panic!("no PNG/JPEG sample in {}", samples.display()));
    let out = Command::new(env!("CARGO_BIN_EXE_anatomy"))
        .args([
            "ask",
            "--image",
            image.to_str().unwrap(),
            "What anatomy is at the top-left of the frame?",
            "--options",
            &OPTIONS.join(";"),
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let choice = j["choice"].as_str().unwrap();
    let letters: Vec<String> = (0..OPTIONS.len())
        .map(|i| ((b'A' + i as u8) as char).to_string())
        .collect();
    assert!(letters.iter().any(|l| l == choice), "{j}");
    let probs: Vec<f64> = j["option_probs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(probs.len(), OPTIONS.len());
    assert!(probs.iter().all(|p| (0.0..=1.0).contains(p)));
    let sum: f64 = probs.iter().sum();
    assert!(
        (sum - 1.0).abs() <= 1e-4,
        "option probabilities sum to {sum}"
    );
}
