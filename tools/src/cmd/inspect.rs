//! `anatomy inspect`: a GGUF file's metadata and tensor table (name, type, shape, bytes), totals
//! and bits per weight, as text or as one JSON object. Long arrays (token lists) are summarised.
//! The training provenance `anatomy export` writes (`anatomy.*`) is shown in full first, since it
//! is what a reader of an exported model wants to know.

use std::path::PathBuf;

use anatomy_runtime::gguf::{GgufFile, Value};
use std::fmt::Write as _;
use std::io::Write as _;

use anyhow::Result;
use serde_json::{json, Value as Json};

use super::export::PREFIX;

/// Arrays longer than this print their length and first elements only.
const ARRAY_HEAD: usize = 8;

#[derive(clap::Args)]
pub struct InspectArgs {
    /// The GGUF file.
    file: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn value_json(v: &Value<'_>) -> Json {
    match v {
        Value::Array(a) => {
            let items: Vec<Json> = a.iter().take(ARRAY_HEAD).map(|x| value_json(&x)).collect();
            if a.len() as usize > ARRAY_HEAD {
                json!({ "type": format!("array<{}>", a.elem_type()), "len": a.len(), "head": items })
            } else {
                Json::Array(items)
            }
        }
        Value::String(s) => json!(s),
        Value::Bool(b) => json!(b),
        Value::F32(x) => json!(x),
        Value::F64(x) => json!(x),
        other => other
            .as_i64()
            .map(Json::from)
            .or_else(|| other.as_u64().map(Json::from))
            .unwrap_or(Json::Null),
    }
}

/// The `anatomy.*` keys without their prefix, values whole; `final_metrics` (a JSON line) parsed.
fn provenance_json(f: &GgufFile) -> serde_json::Map<String, Json> {
    f.metadata()
        .filter_map(|(k, v)| Some((k.strip_prefix(PREFIX)?.to_string(), v)))
        .map(|(k, v)| {
            let j = match (k.as_str(), v.as_str()) {
                ("final_metrics", Some(s)) => serde_json::from_str(s).unwrap_or_else(|_| json!(s)),
                (_, Some(s)) => json!(s),
                _ => value_json(&v),
            };
            (k, j)
        })
        .collect()
}

fn value_text(v: &Value<'_>) -> String {
    match v {
        Value::Array(a) => {
            let head: Vec<String> = a.iter().take(ARRAY_HEAD).map(|x| value_text(&x)).collect();
            let more = if a.len() as usize > ARRAY_HEAD {
                format!(", ... ({} total)", a.len())
            } else {
                String::new()
            };
            format!("[{}{more}]", head.join(", "))
        }
        Value::String(s) if s.len() > 80 => format!(
            "{:?}... ({} bytes)",
            &s[..s.char_indices().nth(60).map_or(s.len(), |(i, _)| i)],
            s.len()
        ),
        other => other.to_string(),
    }
}

pub fn run(args: InspectArgs) -> Result<()> {
    let f = GgufFile::open(&args.file)?;
    let params: u64 = f.tensor_infos().iter().map(|t| t.n_elements()).sum();
    let bytes: u64 = f.tensor_infos().iter().map(|t| t.size).sum();
    let bpw = if params > 0 {
        bytes as f64 * 8.0 / params as f64
    } else {
        0.0
    };
    if args.json {
        let meta: serde_json::Map<String, Json> = f
            .metadata()
            .map(|(k, v)| (k.to_string(), value_json(&v)))
            .collect();
        let tensors: Vec<Json> = f
            .tensor_infos()
            .iter()
            .map(|t| json!({ "name": t.name, "type": t.ty.name(), "shape": t.shape, "bytes": t.size, "offset": t.offset }))
            .collect();
        let out = json!({
            "path": f.path(),
            "version": f.version(),
            "alignment": f.alignment(),
            "data_offset": f.data_offset(),
            "file_size": f.file_size(),
            "metadata": meta,
            "provenance": provenance_json(&f),
            "tensors": tensors,
            "totals": { "tensors": tensors.len(), "parameters": params, "bytes": bytes, "bits_per_weight": bpw },
        });
        return print_text(&(serde_json::to_string_pretty(&out)? + "\n"));
    }
    let mut o = String::new();
    writeln!(
        o,
        "{}: GGUF v{}, alignment {}, data at {}, {} bytes",
        f.path(),
        f.version(),
        f.alignment(),
        f.data_offset(),
        f.file_size()
    )?;
    let prov = provenance_json(&f);
    if !prov.is_empty() {
        writeln!(o, "\nprovenance (anatomy.*):")?;
        for (k, v) in &prov {
            let text = match v {
                Json::String(s) => s.clone(),
                other => other.to_string(),
            };
            // Multi-line values (the settings TOML, the init chain) are indented under the key.
            let mut lines = text.lines();
            writeln!(o, "  {k:<24} {}", lines.next().unwrap_or_default())?;
            for l in lines {
                writeln!(o, "  {:<24} {l}", "")?;
            }
        }
    }
    writeln!(o, "\nmetadata ({} keys):", f.keys().count())?;
    for (k, v) in f.metadata() {
        writeln!(
            o,
            "  {k:<48} {:<8} {}",
            v.value_type().to_string(),
            value_text(&v)
        )?;
    }
    writeln!(
        o,
        "\n{:<40} {:>6} {:>24} {:>12}",
        "tensor", "type", "shape", "bytes"
    )?;
    for t in f.tensor_infos() {
        let shape = t
            .shape
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(" x ");
        writeln!(
            o,
            "{:<40} {:>6} {:>24} {:>12}",
            t.name,
            t.ty.name(),
            shape,
            t.size
        )?;
    }
    let mut by_type = std::collections::BTreeMap::<&str, (usize, u64, u64)>::new();
    for t in f.tensor_infos() {
        let e = by_type.entry(t.ty.name()).or_default();
        *e = (e.0 + 1, e.1 + t.n_elements(), e.2 + t.size);
    }
    writeln!(
        o,
        "\ntotals: {} tensors, {params} parameters, {bytes} bytes, {bpw:.3} bits per weight",
        f.tensor_infos().len()
    )?;
    for (ty, (n, p, b)) in by_type {
        writeln!(
            o,
            "  {ty:<6} {n:>5} tensors {p:>14} parameters {b:>14} bytes"
        )?;
    }
    print_text(&o)
}

/// Writes the report; a closed pipe (`anatomy inspect f.gguf | head`) is not an error.
fn print_text(t: &str) -> Result<()> {
    match std::io::stdout().lock().write_all(t.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}
