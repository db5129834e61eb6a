//! The layout of a synthetic scene: which structure owns each pixel, where the instruments lie, and
//! the per-object facts (area, centroid, robust bounding box) that questions are asked about.
//!
//! The label map is the single source of truth: the renderer paints from it and the questions are
//! answered from it, so an answer can always be read off the image.

use crate::rng::SplitMix64;

use super::render::fbm;

/// The six anatomy classes of SGG-VQA, in the order their label ids use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Structure {
    Liver,
    Gallbladder,
    Omentum,
    AbdominalWallCavity,
    CysticPlate,
    Gut,
}

impl Structure {
    pub const ALL: [Structure; 6] = [
        Structure::Liver,
        Structure::Gallbladder,
        Structure::Omentum,
        Structure::AbdominalWallCavity,
        Structure::CysticPlate,
        Structure::Gut,
    ];

    /// The option text, as the Anatomy-R1 files spell it.
    pub fn name(self) -> &'static str {
        match self {
            Structure::Liver => "Liver",
            Structure::Gallbladder => "Gallbladder",
            Structure::Omentum => "Omentum",
            Structure::AbdominalWallCavity => "Abdominal Wall Cavity",
            Structure::CysticPlate => "Cystic Plate",
            Structure::Gut => "Gut",
        }
    }

    /// The SGG class key used inside question text (`the red cystic_plate anatomy`).
    pub fn key(self) -> &'static str {
        match self {
            Structure::Liver => "liver",
            Structure::Gallbladder => "gallbladder",
            Structure::Omentum => "omentum",
            Structure::AbdominalWallCavity => "abdominal_wall_cavity",
            Structure::CysticPlate => "cystic_plate",
            Structure::Gut => "gut",
        }
    }

    /// The colour word SGG-VQA attaches to the class (three classes share "red", as in the data).
    pub fn colour(self) -> &'static str {
        match self {
            Structure::Liver => "brown",
            Structure::Gallbladder => "white",
            Structure::Omentum => "yellow",
            Structure::AbdominalWallCavity | Structure::CysticPlate | Structure::Gut => "red",
        }
    }

    pub fn id(self) -> u8 {
        self as u8
    }

    pub fn from_id(id: u8) -> Structure {
        Structure::ALL[id as usize % 6]
    }
}

/// The instruments drawn; both appear in the real questions' wording.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstrumentKind {
    Grasper,
    Hook,
}

impl InstrumentKind {
    pub fn key(self) -> &'static str {
        match self {
            InstrumentKind::Grasper => "grasper",
            InstrumentKind::Hook => "hook",
        }
    }
}

/// A straight shaft from outside the frame to a tip, plus the kind's tip shape.
#[derive(Clone, Debug)]
pub struct Instrument {
    pub kind: InstrumentKind,
    /// Where the shaft enters, in unit coordinates (may lie outside the frame).
    pub entry: (f32, f32),
    pub tip: (f32, f32),
    /// Shaft radius in unit coordinates.
    pub radius: f32,
}

/// Something a question can be about: an anatomy class or an instrument (by index).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Object {
    Anatomy(Structure),
    Tool(usize),
}

/// What the questions need to know about one visible object, in unit coordinates.
#[derive(Clone, Debug)]
pub struct Facts {
    pub object: Object,
    /// Visible pixels (anatomy under an instrument is not visible).
    pub area: usize,
    /// Visible fraction of the frame.
    pub share: f32,
    pub centroid: (f32, f32),
    /// 2nd to 98th percentile of visible x and y: a box that stray fringe pixels do not stretch.
    pub bbox: (f32, f32, f32, f32),
}

/// A laid-out scene: label maps at `size` x `size` plus the instrument poses.
#[derive(Clone, Debug)]
pub struct Scene {
    pub size: usize,
    /// Anatomy id per pixel (row-major), whether or not an instrument covers it.
    pub labels: Vec<u8>,
    /// 0 where no instrument, else 1 + instrument index.
    pub tool: Vec<u8>,
    /// Across-the-shaft coordinate in [-1, 1] where `tool` is set, for cylindrical shading; values
    /// beyond 1 mark the tip's jaws, which are drawn darker.
    pub tool_shade: Vec<f32>,
    pub instruments: Vec<Instrument>,
    /// Seed of the texture and lighting noise, drawn with the layout.
    pub texture_seed: u64,
}

/// One Voronoi site: a structure claims the pixels nearest (in warped, weighted distance) to it.
struct Site {
    structure: Structure,
    at: (f32, f32),
    weight: f32,
}

fn uniform(rng: &mut SplitMix64, lo: f32, hi: f32) -> f32 {
    lo + (hi - lo) * rng.unit() as f32
}

/// The pear-shaped gallbladder outline: centre, half-length, half-width, angle.
struct Pear {
    at: (f32, f32),
    a: f32,
    b: f32,
    angle: f32,
}

impl Pear {
    /// Inside test with a noisy rim so the outline is organic rather than a perfect ellipse.
    fn contains(&self, x: f32, y: f32, wobble: f32) -> bool {
        let (dx, dy) = (x - self.at.0, y - self.at.1);
        let (c, s) = (self.angle.cos(), self.angle.sin());
        let u = dx * c + dy * s;
        let v = -dx * s + dy * c;
        // Wider at the fundus (u > 0) than at the neck, like the real organ.
        let b = self.b * (1.0 + 0.35 * (u / self.a).clamp(-1.0, 1.0));
        (u / self.a).powi(2) + (v / b).powi(2) < 1.0 + wobble
    }

    /// The narrow end, where the cystic plate and duct sit.
    fn neck(&self) -> (f32, f32) {
        let (c, s) = (self.angle.cos(), self.angle.sin());
        (self.at.0 - c * self.a, self.at.1 - s * self.a)
    }
}

impl Scene {
    /// Lays out a scene from `rng`; every choice is drawn from it, so the same stream gives the
    /// same scene.
    pub fn generate(size: usize, rng: &mut SplitMix64) -> Scene {
        let texture_seed = rng.next_u64();
        let warp_seed = rng.next_u64();
        let mut sites = Vec::new();
        // Anatomical bias (liver high, omentum and gut low, wall at the rim) with ranges wide
        // enough to overlap, so that no grid cell's answer is fixed by the prior alone.
        if rng.unit() < 0.9 {
            sites.push(Site {
                structure: Structure::Liver,
                at: (uniform(rng, 0.15, 0.85), uniform(rng, 0.05, 0.6)),
                weight: uniform(rng, 1.1, 1.6),
            });
        }
        if rng.unit() < 0.6 {
            let x = if rng.unit() < 0.5 {
                uniform(rng, 0.0, 0.25)
            } else {
                uniform(rng, 0.75, 1.0)
            };
            sites.push(Site {
                structure: Structure::AbdominalWallCavity,
                at: (x, uniform(rng, 0.0, 0.55)),
                weight: uniform(rng, 0.7, 1.1),
            });
        }
        if rng.unit() < 0.7 {
            sites.push(Site {
                structure: Structure::Omentum,
                at: (uniform(rng, 0.1, 0.9), uniform(rng, 0.45, 1.0)),
                weight: uniform(rng, 0.9, 1.3),
            });
        }
        if rng.unit() < 0.55 {
            sites.push(Site {
                structure: Structure::Gut,
                at: (uniform(rng, 0.05, 0.95), uniform(rng, 0.5, 1.0)),
                weight: uniform(rng, 0.8, 1.2),
            });
        }
        let pear = (rng.unit() < 0.75).then(|| Pear {
            at: (uniform(rng, 0.25, 0.75), uniform(rng, 0.2, 0.65)),
            a: uniform(rng, 0.16, 0.27),
            b: uniform(rng, 0.07, 0.12),
            angle: uniform(rng, 0.0, std::f32::consts::TAU),
        });
        let plate_chance = if pear.is_some() { 0.55 } else { 0.2 };
        if rng.unit() < plate_chance {
            let at = match &pear {
                Some(p) => {
                    let n = p.neck();
                    (
                        (n.0 + uniform(rng, -0.06, 0.06)).clamp(0.0, 1.0),
                        (n.1 + uniform(rng, -0.06, 0.06)).clamp(0.0, 1.0),
                    )
                }
                None => (uniform(rng, 0.2, 0.8), uniform(rng, 0.2, 0.8)),
            };
            sites.push(Site {
                structure: Structure::CysticPlate,
                at,
                weight: uniform(rng, 0.45, 0.7),
            });
        }
        // A frame is never a single tissue: make sure the partition has at least two regions.
        while sites.len() < 2 {
            let s = [Structure::Omentum, Structure::Gut, Structure::Liver][rng.below(3)];
            if sites.iter().all(|x| x.structure != s) {
                sites.push(Site {
                    structure: s,
                    at: (uniform(rng, 0.1, 0.9), uniform(rng, 0.1, 0.9)),
                    weight: 1.0,
                });
            }
        }
        let flip = rng.unit() < 0.5;
        if flip {
            for s in &mut sites {
                s.at.0 = 1.0 - s.at.0;
            }
        }
        let pear = pear.map(|mut p| {
            if flip {
                p.at.0 = 1.0 - p.at.0;
                p.angle = std::f32::consts::PI - p.angle;
            }
            p
        });
        let warp_amp = uniform(rng, 0.08, 0.16);

        let n = size * size;
        let mut labels = vec![0u8; n];
        let inv = 1.0 / size as f32;
        for y in 0..size {
            for x in 0..size {
                let (u, v) = ((x as f32 + 0.5) * inv, (y as f32 + 0.5) * inv);
                // Domain warping turns straight Voronoi edges into organic tissue borders.
                let wu = u + warp_amp * (2.0 * fbm(u * 3.0, v * 3.0, warp_seed, 2) - 1.0);
                let wv = v + warp_amp * (2.0 * fbm(u * 3.0 + 17.0, v * 3.0, warp_seed, 2) - 1.0);
                let mut best = (f32::INFINITY, 0u8);
                for s in &sites {
                    let d = ((wu - s.at.0).powi(2) + (wv - s.at.1).powi(2)).sqrt() / s.weight;
                    if d < best.0 {
                        best = (d, s.structure.id());
                    }
                }
                let mut label = best.1;
                if let Some(p) = &pear {
                    let wobble = 0.25 * (fbm(u * 6.0, v * 6.0, warp_seed ^ 0x5a, 2) - 0.5);
                    if p.contains(u, v, wobble) {
                        label = Structure::Gallbladder.id();
                    }
                }
                labels[y * size + x] = label;
            }
        }

        let mut instruments = Vec::new();
        let tools = match rng.below(10) {
            0..=1 => 0,
            2..=7 => 1,
            _ => 2,
        };
        for _ in 0..tools {
            instruments.push(random_instrument(rng));
        }
        let (tool, tool_shade) = rasterize_instruments(size, &instruments);
        Scene {
            size,
            labels,
            tool,
            tool_shade,
            instruments,
            texture_seed,
        }
    }

    /// Facts of every visible anatomy class (in [`Structure::ALL`] order) and every instrument.
    pub fn facts(&self) -> Vec<Facts> {
        let size = self.size;
        let slots = 6 + self.instruments.len();
        let mut hx = vec![vec![0usize; size]; slots];
        let mut hy = vec![vec![0usize; size]; slots];
        let mut sum = vec![(0f64, 0f64); slots];
        let mut area = vec![0usize; slots];
        for (i, (&label, &tool)) in self.labels.iter().zip(&self.tool).enumerate() {
            let (x, y) = (i % size, i / size);
            let slot = match tool {
                0 => label as usize,
                t => 5 + t as usize,
            };
            area[slot] += 1;
            hx[slot][x] += 1;
            hy[slot][y] += 1;
            sum[slot].0 += x as f64 + 0.5;
            sum[slot].1 += y as f64 + 0.5;
        }
        let total = (size * size) as f32;
        let inv = 1.0 / size as f32;
        (0..slots)
            .filter(|&s| area[s] > 0)
            .map(|s| {
                let object = if s < 6 {
                    Object::Anatomy(Structure::ALL[s])
                } else {
                    Object::Tool(s - 6)
                };
                let (x0, x1) = percentile_range(&hx[s], area[s]);
                let (y0, y1) = percentile_range(&hy[s], area[s]);
                Facts {
                    object,
                    area: area[s],
                    share: area[s] as f32 / total,
                    centroid: (
                        (sum[s].0 / area[s] as f64) as f32 * inv,
                        (sum[s].1 / area[s] as f64) as f32 * inv,
                    ),
                    bbox: (x0 * inv, y0 * inv, x1 * inv, y1 * inv),
                }
            })
            .collect()
    }
}

/// The 2nd and 98th percentile bins of a histogram (their outer edges for the upper one).
fn percentile_range(hist: &[usize], total: usize) -> (f32, f32) {
    let lo_at = (total as f64 * 0.02).ceil().max(1.0) as usize;
    let hi_at = (total as f64 * 0.98).floor().max(1.0) as usize;
    let (mut acc, mut lo, mut hi) = (0usize, None, hist.len());
    for (i, &h) in hist.iter().enumerate() {
        acc += h;
        if lo.is_none() && acc >= lo_at {
            lo = Some(i);
        }
        if acc >= hi_at {
            hi = i + 1;
            break;
        }
    }
    (lo.unwrap_or(0) as f32, hi as f32)
}

fn random_instrument(rng: &mut SplitMix64) -> Instrument {
    let kind = if rng.unit() < 0.55 {
        InstrumentKind::Grasper
    } else {
        InstrumentKind::Hook
    };
    // Trocars sit around the lower half and the sides of the view, so shafts come in from there.
    let entry = match rng.below(4) {
        0 => (uniform(rng, -0.1, 0.4), 1.1),
        1 => (uniform(rng, 0.6, 1.1), 1.1),
        2 => (-0.1, uniform(rng, 0.3, 1.0)),
        _ => (1.1, uniform(rng, 0.2, 1.0)),
    };
    let tip = (uniform(rng, 0.25, 0.75), uniform(rng, 0.2, 0.7));
    Instrument {
        kind,
        entry,
        tip,
        radius: uniform(rng, 0.03, 0.045),
    }
}

/// Rasterises the shafts and tips; a later instrument draws over an earlier one.
fn rasterize_instruments(size: usize, instruments: &[Instrument]) -> (Vec<u8>, Vec<f32>) {
    let n = size * size;
    let mut tool = vec![0u8; n];
    let mut shade = vec![0f32; n];
    let inv = 1.0 / size as f32;
    for (k, ins) in instruments.iter().enumerate() {
        let (ex, ey) = ins.entry;
        let (tx, ty) = ins.tip;
        let (dx, dy) = (tx - ex, ty - ey);
        let len = (dx * dx + dy * dy).sqrt().max(1e-6);
        let (ux, uy) = (dx / len, dy / len);
        // Normal to the shaft.
        let (nx, ny) = (-uy, ux);
        let r = ins.radius;
        for y in 0..size {
            for x in 0..size {
                let (px, py) = ((x as f32 + 0.5) * inv, (y as f32 + 0.5) * inv);
                let (rx, ry) = (px - ex, py - ey);
                // Along-shaft and across-shaft coordinates.
                let t = rx * ux + ry * uy;
                let c = rx * nx + ry * ny;
                let hit = if t <= len - 0.5 * r {
                    (c.abs() < r).then_some(c / r)
                } else {
                    tip_shape(ins.kind, t - len, c, r)
                };
                if let Some(s) = hit {
                    tool[y * size + x] = (k + 1) as u8;
                    shade[y * size + x] = s;
                }
            }
        }
    }
    (tool, shade)
}

/// The tip beyond the shaft's end (`t` from the end along the shaft, `c` across it): two opened
/// jaws for a grasper, a thin bent wire for a hook. Jaws return |shade| > 1 so they render darker.
fn tip_shape(kind: InstrumentKind, t: f32, c: f32, r: f32) -> Option<f32> {
    match kind {
        InstrumentKind::Grasper => {
            if t < -0.5 * r {
                return None;
            }
            if t < 0.3 * r {
                // The joint: a slightly narrower collar.
                return (c.abs() < 0.85 * r).then_some(c / r);
            }
            let jaw_len = 2.6 * r;
            if t > jaw_len {
                return None;
            }
            // Each jaw opens outward by ~20 degrees from the axis and tapers to its end.
            let f = (t - 0.3 * r) / jaw_len;
            let centre = 0.45 * r + 0.55 * r * f;
            let half = 0.32 * r * (1.0 - 0.6 * f);
            if (c - centre).abs() < half || (c + centre).abs() < half {
                Some(1.5 * c.signum())
            } else {
                None
            }
        }
        InstrumentKind::Hook => {
            if t < -0.5 * r {
                return None;
            }
            if t < 0.2 * r {
                return (c.abs() < 0.7 * r).then_some(c / r);
            }
            let wire = 0.18 * r;
            let reach = 2.4 * r;
            // Straight wire along the axis, then a short bend to one side: an L hook.
            if t < reach && c.abs() < wire {
                return Some(1.2);
            }
            if (t - reach).abs() < wire && c > -wire && c < 1.1 * r {
                return Some(1.2);
            }
            None
        }
    }
}
