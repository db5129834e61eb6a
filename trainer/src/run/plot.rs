//! PNG plots of one or more runs' `metrics.jsonl`, in the style of the paper's two figures:
//! `reward-and-sq.png` (mean reward on the left axis, mean S(q) dashed on a second, right axis) and
//! `invalid-gradient-ratio.png` (one panel for the overall ratio and one per answer class). Several
//! runs are overlaid with one colour each and the run directory's name as legend, so that GRPO and
//! GRPO+GDQA can be compared on one figure.
//!
//! Text is drawn with `ab_glyph` from a TrueType file read at runtime (DejaVu Sans by default), which
//! keeps the build free of fontconfig/freetype; the bitmap is encoded with the `image` crate the
//! workspace already uses rather than plotters' own encoder, which would pull a second `image`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::StepRecord;

/// File name of the reward / S(q) figure inside the output directory.
pub const REWARD_SQ_FILE: &str = "reward-and-sq.png";
/// File name of the invalid-gradient-ratio figure inside the output directory.
pub const INVALID_RATIO_FILE: &str = "invalid-gradient-ratio.png";
/// The font used when none is given; installed by the `fonts-dejavu-core` package.
pub const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Size of the reward / S(q) figure in pixels.
pub const REWARD_SQ_SIZE: (u32, u32) = (1600, 720);
/// Size of one panel of the invalid-gradient-ratio figure in pixels.
pub const INVALID_PANEL_SIZE: (u32, u32) = (520, 440);
/// Panels per row of the invalid-gradient-ratio figure; more classes wrap onto further rows.
pub const INVALID_PANELS_PER_ROW: u32 = 4;

/// The panel that holds the ratio over all groups, drawn before the per-class panels.
pub const OVERALL_PANEL: &str = "Overall";

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    // The io error is the source rather than part of the message, or `{:#}` chains print it twice.
    #[error("{path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: bad metrics line: {message}")]
    Metrics {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}: no metrics lines to plot")]
    Empty { path: PathBuf },
    #[error("no runs to plot")]
    NoRuns,
    #[error("font {path}: {message}")]
    Font { path: PathBuf, message: String },
    #[error("drawing {file}: {message}")]
    Draw { file: String, message: String },
    #[error("{path}: writing PNG: {message}")]
    Encode { path: PathBuf, message: String },
}

/// One run's records under the name its legend shows.
#[derive(Clone, Debug, PartialEq)]
pub struct RunSeries {
    pub name: String,
    pub records: Vec<StepRecord>,
}

/// Reads `<dir>/metrics.jsonl`; the legend name is the directory's last component.
pub fn load_run(dir: &Path) -> Result<RunSeries, PlotError> {
    let path = dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).map_err(|source| PlotError::Io {
        path: path.clone(),
        source,
    })?;
    let mut records = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record = serde_json::from_str(line).map_err(|e| PlotError::Metrics {
            path: path.clone(),
            line: i + 1,
            message: e.to_string(),
        })?;
        records.push(record);
    }
    if records.is_empty() {
        return Err(PlotError::Empty { path });
    }
    let name = dir
        .canonicalize()
        .ok()
        .as_deref()
        .and_then(Path::file_name)
        .or_else(|| dir.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string());
    Ok(RunSeries { name, records })
}

/// Registers the TrueType font as plotters' "sans-serif" once per process. plotters keeps fonts in
/// a global table that wants `'static` bytes, so the file is read once and leaked on purpose.
pub fn register_font(path: &Path) -> Result<(), PlotError> {
    static REGISTERED: OnceLock<PathBuf> = OnceLock::new();
    if REGISTERED.get().is_some() {
        return Ok(());
    }
    let bytes: &'static [u8] = Box::leak(read_font(path)?.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).map_err(|_| {
        PlotError::Font {
            path: path.to_path_buf(),
            message: "not a TrueType/OpenType font".into(),
        }
    })?;
    let _ = REGISTERED.set(path.to_path_buf());
    Ok(())
}

fn read_font(path: &Path) -> Result<Vec<u8>, PlotError> {
    std::fs::read(path).map_err(|e| PlotError::Font {
        path: path.to_path_buf(),
        message: format!(
            "{e} (install the DejaVu fonts, e.g. `apt-get install fonts-dejavu-core`, or pass another .ttf)"
        ),
    })
}

/// Writes both figures into `out_dir` (created if missing) and returns their paths.
pub fn plot_runs(
    runs: &[RunSeries],
    out_dir: &Path,
    font: &Path,
) -> Result<Vec<PathBuf>, PlotError> {
    if runs.is_empty() {
        return Err(PlotError::NoRuns);
    }
    register_font(font)?;
    std::fs::create_dir_all(out_dir).map_err(|source| PlotError::Io {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let reward = out_dir.join(REWARD_SQ_FILE);
    render(&reward, REWARD_SQ_SIZE, |area| draw_reward_sq(area, runs))?;
    let classes = invalid_panels(runs);
    let size = invalid_ratio_size(classes.len());
    let invalid = out_dir.join(INVALID_RATIO_FILE);
    render(&invalid, size, |area| draw_invalid(area, runs, &classes))?;
    Ok(vec![reward, invalid])
}

/// The panels of the invalid-gradient figure: overall first, then every class any run saw, sorted.
pub fn invalid_panels(runs: &[RunSeries]) -> Vec<String> {
    let classes: BTreeSet<&String> = runs
        .iter()
        .flat_map(|r| r.records.iter().flat_map(|s| s.invalid_per_class.keys()))
        .collect();
    std::iter::once(OVERALL_PANEL.to_string())
        .chain(classes.into_iter().cloned())
        .collect()
}

/// Pixel size of the invalid-gradient figure for `panels` panels.
pub fn invalid_ratio_size(panels: usize) -> (u32, u32) {
    let panels = panels.max(1) as u32;
    let cols = panels.min(INVALID_PANELS_PER_ROW);
    let rows = panels.div_ceil(INVALID_PANELS_PER_ROW);
    (cols * INVALID_PANEL_SIZE.0, rows * INVALID_PANEL_SIZE.1)
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
type DrawResult = Result<(), String>;

fn render(
    path: &Path,
    (w, h): (u32, u32),
    draw: impl FnOnce(&Area) -> DrawResult,
) -> Result<(), PlotError> {
    let file = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut buf = vec![255u8; w as usize * h as usize * 3];
    {
        let area = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        area.fill(&WHITE).map_err(|e| draw_err(&file, e))?;
        draw(&area).map_err(|message| PlotError::Draw {
            file: file.clone(),
            message,
        })?;
        area.present().map_err(|e| draw_err(&file, e))?;
    }
    image::save_buffer_with_format(
        path,
        &buf,
        w,
        h,
        image::ExtendedColorType::Rgb8,
        image::ImageFormat::Png,
    )
    .map_err(|e| PlotError::Encode {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn draw_err(file: &str, e: impl std::fmt::Display) -> PlotError {
    PlotError::Draw {
        file: file.to_string(),
        message: e.to_string(),
    }
}

fn s(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// The paper's two colours first (firebrick for the method, steelblue for the baseline), then a
/// few more that stay distinguishable when more runs are overlaid.
fn run_colour(i: usize) -> RGBColor {
    const PALETTE: [RGBColor; 6] = [
        RGBColor(178, 34, 34),
        RGBColor(70, 130, 180),
        RGBColor(46, 139, 87),
        RGBColor(255, 140, 0),
        RGBColor(106, 90, 205),
        RGBColor(105, 105, 105),
    ];
    PALETTE[i % PALETTE.len()]
}

/// A value range padded by 5% so that the extreme points do not sit on the frame; a flat series
/// gets a fixed margin because a zero-height range cannot be drawn.
fn padded_range(values: impl Iterator<Item = f32>) -> std::ops::Range<f32> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return 0.0..1.0;
    }
    let pad = if hi > lo { (hi - lo) * 0.05 } else { 0.05 };
    (lo - pad)..(hi + pad)
}

fn step_range(runs: &[RunSeries]) -> std::ops::Range<f32> {
    let steps = runs
        .iter()
        .flat_map(|r| r.records.iter().map(|s| s.step as f32));
    let (lo, hi) = steps.fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() || hi <= lo {
        let lo = if lo.is_finite() { lo } else { 0.0 };
        return (lo - 0.5)..(lo + 0.5);
    }
    let pad = (hi - lo) * 0.03;
    (lo - pad)..(hi + pad)
}

/// Steps are whole numbers: the f32 axis would print "5.0", and on a short run its fractional
/// ticks would all round to the same few labels, so those stay blank.
fn step_label(x: &f32) -> String {
    if (x - x.round()).abs() < 1e-3 {
        format!("{x:.0}")
    } else {
        String::new()
    }
}

/// Markers turn into a smear on long runs, so only short series get them.
fn markers(points: usize) -> bool {
    points <= 80
}

fn finite(points: Vec<(f32, f32)>) -> Vec<(f32, f32)> {
    points.into_iter().filter(|(_, y)| y.is_finite()).collect()
}

fn draw_reward_sq(area: &Area, runs: &[RunSeries]) -> DrawResult {
    let rewards = runs.iter().flat_map(|r| r.records.iter().map(|s| s.reward));
    let sqs = runs
        .iter()
        .flat_map(|r| r.records.iter().filter_map(|s| s.sq));
    let mut chart = ChartBuilder::on(area)
        .margin(20)
        .x_label_area_size(60)
        .y_label_area_size(90)
        .right_y_label_area_size(90)
        .build_cartesian_2d(step_range(runs), padded_range(rewards))
        .map_err(s)?
        .set_secondary_coord(step_range(runs), padded_range(sqs));
    chart
        .configure_mesh()
        .disable_x_mesh()
        .bold_line_style(RGBColor(220, 220, 220))
        .light_line_style(TRANSPARENT)
        .x_label_formatter(&step_label)
        .x_desc("Step")
        .y_desc("Reward")
        .axis_desc_style(("sans-serif", 30))
        .label_style(("sans-serif", 20))
        .draw()
        .map_err(s)?;
    chart
        .configure_secondary_axes()
        .y_desc("S(q)")
        .axis_desc_style(("sans-serif", 30))
        .label_style(("sans-serif", 20))
        .draw()
        .map_err(s)?;

    for (i, run) in runs.iter().enumerate() {
        let colour = run_colour(i);
        let line = colour.stroke_width(3);
        let reward = finite(
            run.records
                .iter()
                .map(|s| (s.step as f32, s.reward))
                .collect(),
        );
        let with_markers = markers(reward.len());
        chart
            .draw_series(LineSeries::new(reward.iter().copied(), line))
            .map_err(s)?
            .label(format!("{} Reward", run.name))
            .legend(move |(x, y)| {
                EmptyElement::at((x, y))
                    + PathElement::new(vec![(0, 0), (30, 0)], line)
                    + Circle::new((15, 0), 6, colour.filled())
            });
        if with_markers {
            chart
                .draw_series(reward.iter().map(|&p| Circle::new(p, 6, colour.filled())))
                .map_err(s)?;
        }
        let sq = finite(
            run.records
                .iter()
                .filter_map(|s| s.sq.map(|q| (s.step as f32, q)))
                .collect(),
        );
        if sq.is_empty() {
            continue;
        }
        chart
            .draw_secondary_series(DashedLineSeries::new(sq, 12, 8, line))
            .map_err(s)?
            .label(format!("{} S(q)", run.name))
            .legend(move |(x, y)| {
                EmptyElement::at((x, y))
                    + PathElement::new(vec![(0, 0), (12, 0)], line)
                    + PathElement::new(vec![(18, 0), (30, 0)], line)
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(200, 200, 200))
        .legend_area_size(45)
        .label_font(("sans-serif", 24))
        .draw()
        .map_err(s)
}

fn draw_invalid(area: &Area, runs: &[RunSeries], panels: &[String]) -> DrawResult {
    let cols = (panels.len() as u32).clamp(1, INVALID_PANELS_PER_ROW) as usize;
    let rows = panels.len().div_ceil(cols);
    let cells = area.split_evenly((rows, cols));
    for (panel, cell) in panels.iter().zip(cells.iter()) {
        let series: Vec<Vec<(f32, f32)>> = runs
            .iter()
            .map(|run| {
                finite(
                    run.records
                        .iter()
                        .filter_map(|s| {
                            let y = if panel == OVERALL_PANEL {
                                Some(s.invalid_ratio)
                            } else {
                                s.invalid_per_class.get(panel).copied()
                            };
                            y.map(|y| (s.step as f32, y))
                        })
                        .collect(),
                )
            })
            .collect();
        let ys = series.iter().flatten().map(|&(_, y)| y);
        let mut chart = ChartBuilder::on(cell)
            .margin(12)
            .caption(panel, ("sans-serif", 26))
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d(step_range(runs), padded_range(ys))
            .map_err(s)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .bold_line_style(RGBColor(220, 220, 220))
            .light_line_style(TRANSPARENT)
            .x_label_formatter(&step_label)
            .x_desc("Step")
            .y_desc("Invalid Gradient Ratio")
            .axis_desc_style(("sans-serif", 20))
            .label_style(("sans-serif", 15))
            .draw()
            .map_err(s)?;
        for (i, (run, points)) in runs.iter().zip(series).enumerate() {
            let colour = run_colour(i);
            let line = colour.stroke_width(2);
            let with_markers = markers(points.len());
            chart
                .draw_series(LineSeries::new(points.iter().copied(), line))
                .map_err(s)?
                .label(run.name.clone())
                .legend(move |(x, y)| {
                    EmptyElement::at((x, y))
                        + PathElement::new(vec![(0, 0), (24, 0)], line)
                        + Circle::new((12, 0), 4, colour.filled())
                });
            if with_markers {
                chart
                    .draw_series(points.iter().map(|&p| Circle::new(p, 4, colour.filled())))
                    .map_err(s)?;
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(200, 200, 200))
            .legend_area_size(35)
            .label_font(("sans-serif", 17))
            .draw()
            .map_err(s)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};

    use super::*;

    fn record(step: usize, reward: f32, sq: f32, invalid: &[(&str, f32)]) -> serde_json::Value {
        let per_class: BTreeMap<String, f32> =
            invalid.iter().map(|&(c, v)| (c.to_string(), v)).collect();
        let overall = per_class.values().sum::<f32>() / per_class.len().max(1) as f32;
        serde_json::json!({
            "step": step, "reward": reward, "accuracy": reward * 0.8, "format_reward": 1.0,
            "sq": sq, "invalid_ratio": overall, "invalid_per_class": per_class, "kl": null,
            "loss": 0.1, "completion_len": 12.0, "lr": 1e-5, "stage": step / 10,
            "grad_norm": 0.5, "clip_ratio": 0.0,
        })
    }

    fn write_run(dir: &Path, slope: f32, invalid_drop: f32) {
        std::fs::create_dir_all(dir).unwrap();
        let mut text = String::new();
        for step in 1..=30 {
            let t = step as f32 / 30.0;
            let wiggle = ((step * 7) % 5) as f32 * 0.01;
            let line = record(
                step,
                0.3 + slope * t + wiggle,
                0.2 + 0.4 * t,
                &[
                    ("Gallbladder", (0.4 - invalid_drop * t).max(0.0)),
                    ("Liver", (0.15 - invalid_drop * t * 0.5).max(0.0) + wiggle),
                ],
            );
            text.push_str(&line.to_string());
            text.push('\n');
        }
        std::fs::write(dir.join("metrics.jsonl"), text).unwrap();
    }

    fn distinct_colours(path: &Path) -> (u32, u32, usize) {
        let img = image::open(path).unwrap().to_rgb8();
        let colours: HashSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
        (img.width(), img.height(), colours.len())
    }

    #[test]
    fn two_runs_plot_into_two_non_blank_pngs_of_the_documented_size() {
        let tmp = tempfile::tempdir().unwrap();
        write_run(&tmp.path().join("grpo"), 0.05, 0.05);
        write_run(&tmp.path().join("grpo-gdqa"), 0.15, 0.35);
        let runs = [
            load_run(&tmp.path().join("grpo")).unwrap(),
            load_run(&tmp.path().join("grpo-gdqa")).unwrap(),
        ];
        assert_eq!(runs[0].name, "grpo");
        assert_eq!(runs[1].records.len(), 30);
        let out = tmp.path().join("plots");
        let files = plot_runs(&runs, &out, Path::new(DEFAULT_FONT)).unwrap();
        assert_eq!(
            files,
            vec![out.join(REWARD_SQ_FILE), out.join(INVALID_RATIO_FILE)]
        );

        let (w, h, colours) = distinct_colours(&files[0]);
        assert_eq!((w, h), REWARD_SQ_SIZE);
        assert!(colours >= 6, "reward plot looks blank: {colours} colours");

        assert_eq!(invalid_panels(&runs), ["Overall", "Gallbladder", "Liver"]);
        let (w, h, colours) = distinct_colours(&files[1]);
        assert_eq!((w, h), invalid_ratio_size(3));
        assert_eq!((w, h), (3 * INVALID_PANEL_SIZE.0, INVALID_PANEL_SIZE.1));
        assert!(colours >= 6, "invalid plot looks blank: {colours} colours");
        // Both run colours must appear, or the overlay lost a run.
        let img = image::open(&files[1]).unwrap().to_rgb8();
        for i in 0..2 {
            let c = run_colour(i);
            assert!(
                img.pixels().any(|p| p.0 == [c.0, c.1, c.2]),
                "run {i} missing"
            );
        }
        if let Ok(keep) = std::env::var("ANATOMY_KEEP_PLOTS") {
            for f in &files {
                std::fs::copy(f, Path::new(&keep).join(f.file_name().unwrap())).unwrap();
            }
        }
    }

    #[test]
    fn bad_input_is_an_error_naming_file_and_line() {
        let tmp = tempfile::tempdir().unwrap();
        let err = load_run(tmp.path()).unwrap_err();
        assert!(matches!(err, PlotError::Io { .. }), "{err}");
        assert!(err.to_string().contains("metrics.jsonl"));

        let good = record(1, 0.5, 0.2, &[("Liver", 0.1)]).to_string();
        std::fs::write(
            tmp.path().join("metrics.jsonl"),
            format!("{good}\n{{\"step\": oops}}\n"),
        )
        .unwrap();
        let err = load_run(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("metrics.jsonl:2:"), "{err}");

        std::fs::write(tmp.path().join("metrics.jsonl"), "\n").unwrap();
        assert!(matches!(load_run(tmp.path()), Err(PlotError::Empty { .. })));
        assert!(matches!(
            plot_runs(&[], tmp.path(), Path::new(DEFAULT_FONT)),
            Err(PlotError::NoRuns)
        ));
    }

    #[test]
    fn a_missing_font_is_a_clear_error() {
        let err = read_font(Path::new("/nonexistent/font.ttf"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/nonexistent/font.ttf") && err.contains("DejaVu"),
            "{err}"
        );
    }
}
