//! The `anatomy.*` metadata an exported language-model GGUF carries: where the model came from
//! (base, method and resolved settings, init chain, data hash, steps, final metrics, code
//! version) and the prompt layout it was trained on, which the runtime then uses. Nothing here
//! depends on the time of export, so the same run exported twice gives the same bytes.

use std::io::Read;
use std::path::Path;

use anatomy_runtime::generate::{PROMPT_HEADING_KEY, PROMPT_INSTRUCTION_KEY};
use anatomy_runtime::gguf::OwnedValue;
use anatomy_trainer::data::{self, LoadOptions};
use anatomy_trainer::run::{checkpoint, RunConfig};
use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// Every provenance key lives under this prefix.
pub const PREFIX: &str = "anatomy.";

type Meta = Vec<(String, OwnedValue)>;

fn put(m: &mut Meta, key: &str, v: impl Into<String>) {
    m.push((format!("{PREFIX}{key}"), OwnedValue::String(v.into())));
}

/// What the export knows about the model it writes.
pub struct Inputs<'a> {
    pub base: &'a Path,
    pub config: Option<&'a RunConfig>,
    pub checkpoint: &'a Path,
    pub steps: usize,
    pub run_dir: Option<&'a Path>,
}

/// The provenance metadata; facts that cannot be had (a data file moved away) are left out with
/// a warning rather than failing the export.
pub fn collect(inp: &Inputs<'_>) -> Result<Meta> {
    let mut m = Meta::new();
    put(&mut m, "base_model", base_name(inp.base));
    if let Some(cfg) = inp.config {
        put(&mut m, "method", method_label(cfg));
        put(&mut m, "settings", cfg.to_toml());
        if let Some(chain) = init_chain(cfg) {
            put(&mut m, "init", chain);
        }
        match sha256_file(&cfg.data) {
            Ok(h) => put(&mut m, "data_sha256", h),
            Err(e) => eprintln!("warning: no anatomy.data_sha256: {e:#}"),
        }
        match prompt_of(cfg) {
            Ok((instruction, heading)) => {
                m.push((
                    PROMPT_INSTRUCTION_KEY.into(),
                    OwnedValue::String(instruction),
                ));
                m.push((PROMPT_HEADING_KEY.into(), OwnedValue::String(heading)));
            }
            Err(e) => eprintln!(
                "warning: no anatomy.prompt.* (the runtime will use its default prompt): {e:#}"
            ),
        }
    }
    if let Some(name) = inp.checkpoint.file_name() {
        put(&mut m, "checkpoint", name.to_string_lossy());
    }
    m.push((format!("{PREFIX}steps"), OwnedValue::U64(inp.steps as u64)));
    if let Some(line) = inp.run_dir.and_then(|d| final_metrics(d, inp.steps)) {
        put(&mut m, "final_metrics", line);
    }
    put(&mut m, "code_version", code_version());
    Ok(m)
}

/// The base's `_name_or_path` when its config has one, else the directory's name.
fn base_name(base: &Path) -> String {
    let from_config = std::fs::read(base.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["_name_or_path"].as_str().map(String::from))
        .filter(|s| !s.trim().is_empty());
    from_config.unwrap_or_else(|| {
        base.canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| base.display().to_string())
    })
}

/// `grpo`, `dapo+ascl`, `grpo+ascl+gdqa`, ...: the method with the paper's two additions.
pub fn method_label(cfg: &RunConfig) -> String {
    let mut s = serde_json::to_value(cfg.method)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_else(|| format!("{:?}", cfg.method).to_lowercase());
    if cfg.ascl.enabled {
        s.push_str("+ascl");
    }
    if cfg.gdqa.enabled {
        s.push_str("+gdqa");
    }
    s
}

/// The warm starts this run stands on, nearest first, one per line: `<checkpoint> (<method>,
/// step N)`. A level whose files are gone is listed by path alone.
fn init_chain(cfg: &RunConfig) -> Option<String> {
    let mut lines = Vec::new();
    let mut next = cfg.init.clone();
    // Bounded: a chain longer than this is a cycle of configs pointing at each other.
    while let Some(ck) = next.take().filter(|_| lines.len() < 16) {
        let run = ck.parent().map(|p| p.join("config.toml"));
        let parent = run.and_then(|p| RunConfig::load(&p, &[]).ok());
        let step = checkpoint::load(&ck).ok().map(|c| c.state.step);
        let mut line = ck.display().to_string();
        match (&parent, step) {
            (Some(p), Some(s)) => line.push_str(&format!(" ({}, step {s})", method_label(p))),
            (Some(p), None) => line.push_str(&format!(" ({})", method_label(p))),
            (None, Some(s)) => line.push_str(&format!(" (step {s})")),
            (None, None) => {}
        }
        lines.push(line);
        next = parent.and_then(|p| p.init);
    }
    (!lines.is_empty()).then(|| lines.join("\n"))
}

/// Lower-case hex SHA-256 of a file, read in blocks.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Instruction and option heading of the training data's first question: the wording the
/// model learnt to answer.
fn prompt_of(cfg: &RunConfig) -> Result<(String, String)> {
    let opts = LoadOptions {
        image_root: cfg.image_root.clone(),
        skip_bad: true,
    };
    let loaded = data::load(&cfg.data, &opts)?;
    let q = loaded
        .questions
        .first()
        .with_context(|| format!("{}: no questions", cfg.data.display()))?;
    Ok((q.instruction.clone(), q.options_heading.clone()))
}

/// The metrics line of the exported step (line `steps`, since a run writes one per step and a
/// resume drops the lines after its checkpoint), else the last line.
fn final_metrics(run_dir: &Path, steps: usize) -> Option<String> {
    let text = std::fs::read_to_string(run_dir.join("metrics.jsonl")).ok()?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let line = steps
        .checked_sub(1)
        .and_then(|i| lines.get(i))
        .or(lines.last())?;
    Some(line.trim().to_string())
}

/// `anatomy-cli <version>`, plus ` (git <commit>)` when the source tree's `git rev-parse HEAD`
/// answers.
pub fn code_version() -> String {
    let mut v = format!("anatomy-cli {}", env!("CARGO_PKG_VERSION"));
    let commit = std::process::Command::new("git")
        .args(["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    if let Some(c) = commit {
        v.push_str(&format!(" (git {c})"));
    }
    v
}
