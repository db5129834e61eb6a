//! A synthetic multiple-choice task whose answer can be read off the image: each image is one flat
//! colour and the question asks which colour it is. Written as our JSONL layout (`image`,
//! `question`, `options`, `answer`) with PNG images beside it, for the learning test and
//! `configs/tiny-cpu.toml`.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::RunError;
use crate::rng::SplitMix64;

/// The colour task's instruction: short, so that a learning test spends its time on the answer
/// rather than on a long prompt, and still asking for the tagged format the rewards score.
pub const COLOUR_INSTRUCTION: &str =
    "Answer with the letter of the right option: <think> </think> <answer>LETTER</answer>.";

pub const COLOURS: [(&str, [u8; 3]); 4] = [
    ("Red", [230, 30, 30]),
    ("Green", [30, 200, 40]),
    ("Blue", [30, 40, 230]),
    ("Yellow", [240, 230, 30]),
];

/// Writes `n` questions over the first `colours` colours (2 to 4) into `dir`: `questions.jsonl`
/// and one 56x56 PNG per colour. With `shuffle_options` the option order changes per question (the
/// letter then depends on the options as well as the image); without, each colour keeps its letter.
/// Returns the JSONL path.
pub fn write_colour_task(
    dir: &Path,
    n: usize,
    colours: usize,
    shuffle_options: bool,
    seed: u64,
) -> Result<PathBuf, RunError> {
    let colours = colours.clamp(2, COLOURS.len());
    std::fs::create_dir_all(dir).map_err(|e| RunError::io(dir, e))?;
    for (name, rgb) in &COLOURS[..colours] {
        let img = image::RgbImage::from_pixel(56, 56, image::Rgb(*rgb));
        let path = dir.join(format!("{}.png", name.to_lowercase()));
        img.save(&path).map_err(|e| RunError::Checkpoint {
            path: path.clone(),
            message: e.to_string(),
        })?;
    }
    let mut rng = SplitMix64::new(seed);
    let path = dir.join("questions.jsonl");
    let mut out = std::fs::File::create(&path).map_err(|e| RunError::io(&path, e))?;
    for i in 0..n {
        let answer = rng.below(colours);
        let mut options: Vec<&str> = COLOURS[..colours].iter().map(|c| c.0).collect();
        if shuffle_options {
            rng.shuffle(&mut options);
        }
        let line = serde_json::json!({
            "id": format!("colour-{i}"),
            "image": format!("{}.png", COLOURS[answer].0.to_lowercase()),
            "instruction": COLOUR_INSTRUCTION,
            "question": "What colour is the image?",
            "options": options,
            "answer": COLOURS[answer].0,
        });
        writeln!(out, "{line}").map_err(|e| RunError::io(&path, e))?;
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{load, LoadOptions};

    #[test]
    fn the_loader_reads_the_task_and_answers_match_images() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_colour_task(dir.path(), 20, 3, true, 5).unwrap();
        let opts = LoadOptions {
            image_root: Some(dir.path().to_path_buf()),
            skip_bad: false,
        };
        let qs = load(&path, &opts).unwrap().questions;
        assert_eq!(qs.len(), 20);
        for q in &qs {
            assert_eq!(q.options.len(), 3);
            let file = q.image.file_stem().unwrap().to_str().unwrap();
            assert_eq!(file, q.answer_text().to_lowercase());
            assert!(q.image.exists());
        }
    }
}
