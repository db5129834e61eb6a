//! Every config committed under `configs/` reads as what it claims to be (run configs through the
//! same parser as `anatomy train`, model sizes as `anatomy init-base` reads them), so a recipe
//! cannot rot unnoticed.

use std::path::PathBuf;

use anatomy_trainer::base::BaseSpec;
use anatomy_trainer::run::RunConfig;

fn configs() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../configs"))
}

#[test]
fn committed_configs_parse() {
    for run in [
        "tiny-cpu.toml",
        "tiny-cpu-warmstart.toml",
        "demo-sft.toml",
        "demo-grpo.toml",
    ] {
        let cfg =
            RunConfig::load(&configs().join(run), &[]).unwrap_or_else(|e| panic!("{run}: {e}"));
        assert!(cfg.steps > 0, "{run}");
    }
    for spec in ["tiny-cpu-base.toml", "demo-base.toml"] {
        let text = std::fs::read_to_string(configs().join(spec)).unwrap();
        let s: BaseSpec = toml::from_str(&text).unwrap_or_else(|e| panic!("{spec}: {e}"));
        assert!(s.bpe_vocab >= 256, "{spec}");
    }
    // The recipe names only configs that exist.
    let recipe = std::fs::read_to_string(configs().join("demo-recipe.sh")).unwrap();
    for word in recipe.split_whitespace() {
        if let Some(name) = word.strip_prefix("configs/") {
            assert!(configs().join(name).exists(), "demo-recipe.sh names {word}");
        }
    }
}
